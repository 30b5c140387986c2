"""An int4 variant really built from a tiny export: MatMulNBits in its graph, smaller than the export, loaded by
Optimum (evaluate.load_onnx_model) and answering close to it, with the contract files of its own; its weights kept in
external data where the export's were; built from an fp16 export too, which onnxruntime runs on the CPU."""
import json
import shutil

import pytest

from lorafleet import contract, evaluate, export
from lorafleet.config import load_domain
from lorafleet.data import prepare
from lorafleet.results import DomainResult
from tests.conftest import DOMAINS_DIR

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(small_base, tmp_path_factory):
    """small_base exported as the pipeline exports the merged model (fp32, graph in onnx/)."""
    return export.to_onnx(small_base, tmp_path_factory.mktemp("export") / "onnx")


def _ops(folder) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(export.onnx_graph(folder)), load_external_data=False).graph.node]


def test_int4_variant_is_smaller_loads_in_optimum_answers_and_carries_its_contract(exported, tmp_path):
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {"export": {"variants": ["fp32", "int4"]}})
    data = prepare(cfg)
    int4 = export.build_variant(exported, tmp_path / "onnx-int4", "int4", cfg.export.int4_block_size)

    # 2 layers x 7 projections + the LM head; the embedding (a Gather) stays fp32
    assert _ops(int4).count("MatMulNBits") == 15 and "MatMulNBits" not in _ops(exported)
    assert _ops(int4).count("Gather") == _ops(exported).count("Gather")
    assert export.graph_bytes(int4) < 0.6 * export.graph_bytes(exported), (export.graph_bytes(int4),
                                                                            export.graph_bytes(exported))
    assert {p.name for p in int4.iterdir()} == {p.name for p in exported.iterdir()}  # tokenizer, config: the export's
    assert json.loads((int4 / export.MARKER).read_text()) == {"variant": "int4", "int4_block_size": 32,
                                                              "from": {"dtype": "fp32"}}
    built = export.onnx_graph(int4).stat().st_mtime_ns
    assert export.build_variant(exported, int4, "int4", 32) == int4  # the same variant again: skipped
    assert export.onnx_graph(int4).stat().st_mtime_ns == built

    fp32_model, tokenizer = evaluate.load_onnx_model(str(exported))
    int4_model, int4_tokenizer = evaluate.load_onnx_model(str(int4))
    assert int4_model.provider == "CPUExecutionProvider"
    schema = json.loads(open(cfg.schema_path).read())
    examples, eval_cfg = data.test[:4], cfg.eval.model_copy(update={"max_new_tokens": 16, "batch_size": 4})
    fp32_scores = evaluate.evaluate_model(fp32_model, tokenizer, examples, schema, eval_cfg)
    int4_scores = evaluate.evaluate_model(int4_model, int4_tokenizer, examples, schema, eval_cfg)
    assert int4_scores.evaluation.n == 4 and all(ids for ids in int4_scores.token_ids)
    parity = export.check_parity(fp32_model, int4_model, tokenizer, examples, fp32_scores.token_ids,
                                 int4_scores.token_ids)
    # 4-bit weights move the logits, but not far: the answers mostly agree with the export's
    assert 0 < parity.max_abs_logit_diff < 5 and parity.greedy_match_rate >= 0.5, parity
    speed = export.measure_speed(int4_model, int4_tokenizer, examples[0], new_tokens=8, runs=2)
    assert speed.new_tokens == 8 and speed.runs == 2 and speed.tokens_per_s > 0
    assert speed.prompt_tokens == len(int4_tokenizer(int4_tokenizer.apply_chat_template(
        examples[0].prompt, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])

    result = DomainResult(name=cfg.name, status="published", dataset_version="d" * 64)
    written = contract.write_contract(int4, "onnx", cfg, schema, result, "run-1", examples[0], variant="int4")
    model = contract.read_contract(int4)
    assert model == written and (model.kind, model.variant, model.dtype) == ("onnx", "int4", "int4")
    assert model.quantization.model_dump() == {"method": "MatMulNBits", "bits": 4, "block_size": 32, "symmetric": False,
                                               "matmuls": 15, "unquantized": "float32"}
    assert {"chat_template.jinja", "generation_config.json", "output_schema.json", "genai_config.json", "README.md",
            "onnx/model.onnx"} <= {f.name for f in model.files}
    card = (int4 / "README.md").read_text()
    assert "# contracts (onnx, int4)" in card and "15 MatMul weights 4-bit (MatMulNBits, blocks of 32" in card
    export_contract = contract.write_contract(exported, "onnx", cfg, schema, result, "run-1", examples[0])
    assert (export_contract.variant, export_contract.dtype, export_contract.quantization) == ("fp32", "float32", None)


def test_int4_keeps_its_weights_in_external_data_where_the_export_did(exported, tmp_path):
    """A big model's export keeps its weights beside the graph (protobuf's 2 GB limit): the int4 variant too."""
    import onnx

    big = tmp_path / "big"
    shutil.copytree(exported, big)
    graph = onnx.load(str(export.onnx_graph(big)))
    export.onnx_graph(big).unlink()
    onnx.save_model(graph, str(export.onnx_graph(big)), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=export.EXTERNAL_DATA)
    int4 = export.build_variant(big, tmp_path / "big-int4", "int4", 64)
    files = {p.name: p.stat().st_size for p in export.onnx_graph(int4).parent.iterdir()}
    assert set(files) == {"model.onnx", export.EXTERNAL_DATA} and files["model.onnx"] < files[export.EXTERNAL_DATA]
    assert export.graph_bytes(int4) == sum(files.values())
    model, tokenizer = evaluate.load_onnx_model(str(int4))
    inputs = tokenizer("The parties agree", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == \
        inputs["input_ids"].shape[1] + 4
    blocks = {a.i for n in onnx.load(str(export.onnx_graph(int4)), load_external_data=False).graph.node
              if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    assert blocks == {64}


def test_int4_from_an_fp16_export_runs_on_the_cpu(exported, tmp_path):
    """Optimum exports fp16 on CUDA only; the fp32 export converted to fp16 stands in for it here: MatMulNBits with fp16
    weights and activations runs in onnxruntime on the CPU, where the variants' speed is measured."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = tmp_path / "fp16"
    shutil.copytree(exported, fp16)
    graph = convert_float_to_float16(onnx.load(str(export.onnx_graph(fp16))), keep_io_types=False,
                                     disable_shape_infer=True)
    onnx.save(graph, str(export.onnx_graph(fp16)))
    (fp16 / export.MARKER).write_text(json.dumps({"dtype": "fp16"}))
    int4 = export.build_variant(fp16, tmp_path / "fp16-int4", "int4", 32)
    assert _ops(int4).count("MatMulNBits") == 15
    model, tokenizer = evaluate.load_onnx_model(str(int4), provider="CPUExecutionProvider")
    assert next(i for i in model.session.get_inputs() if i.name.startswith("past_key_values")).type == "tensor(float16)"
    inputs = tokenizer("The parties agree", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6
    assert json.loads((int4 / export.MARKER).read_text())["from"] == {"dtype": "fp16"}
