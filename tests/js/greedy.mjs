// A JavaScript consumer of a published ONNX folder: transformers.js loads it offline, renders the prompt with the
// folder's own chat template (none passed by hand) and answers greedily.
//   node greedy.mjs FOLDER MESSAGES_JSON MAX_NEW_TOKENS   ->   {"prompt": "...", "tokens": [...]}
import path from "node:path";
import { env, AutoTokenizer, AutoModelForCausalLM } from "@huggingface/transformers";

const [folder, messagesJson, maxNewTokens] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + path.sep;
const id = path.basename(path.resolve(folder));
const tokenizer = await AutoTokenizer.from_pretrained(id);
const prompt = tokenizer.apply_chat_template(JSON.parse(messagesJson), { tokenize: false, add_generation_prompt: true });
const model = await AutoModelForCausalLM.from_pretrained(id, { dtype: "fp32" });
const inputs = tokenizer(prompt, { add_special_tokens: false });
const output = await model.generate({ ...inputs, max_new_tokens: Number(maxNewTokens), do_sample: false });
const tokens = output.tolist()[0].slice(inputs.input_ids.dims[1]).map(Number);
console.log(JSON.stringify({ prompt, tokens }));
