"""One trial on a very small base, then merge, ONNX export and parity: every stage real."""
import json
import shutil

import pytest

from lorafleet import evaluate, export, merge
from lorafleet.config import load_domain
from lorafleet.data import prepare
from lorafleet.train import HParams, train_trial
from tests.conftest import DOMAINS_DIR

pytestmark = pytest.mark.integration


def test_trial_merge_export_parity(small_base, tmp_path, monkeypatch):
    from optimum.onnxruntime import ORTModelForCausalLM

    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {"train": {"max_steps": 8, "eval_steps": 4}})
    data = prepare(cfg)
    result = train_trial(str(small_base), cfg.train, HParams(lora_rank=4, learning_rate=2e-3, epochs=1),
                         data.train[:64], data.val[:8], tmp_path / "trial")
    assert result.backend == "peft" and result.metrics["steps"] == 8
    assert result.metrics["eval_loss"] < 20
    merged = merge.merge_16bit(str(small_base), result.adapter_dir, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    again = merge.merge_16bit(str(small_base), result.adapter_dir, tmp_path / "merged")  # skips: already merged
    assert again == merged
    onnx_dir = export.to_onnx(merged, tmp_path / "onnx")
    onnx_model = ORTModelForCausalLM.from_pretrained(onnx_dir)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in a task with one CPU
    task_model, _ = evaluate.load_onnx_model(str(onnx_dir))
    assert task_model.session.get_session_options().intra_op_num_threads == 1
    assert task_model.provider == evaluate.onnx_provider()  # the session runs where it was asked to (here: the CPU)
    torch_model, tokenizer = evaluate.load_torch_model(str(merged))
    schema = json.loads(open(cfg.schema_path).read())
    examples, eval_cfg = data.test[:4], cfg.eval.model_copy(update={"max_new_tokens": 16, "batch_size": 4})
    torch_scores = evaluate.evaluate_model(torch_model, tokenizer, examples, schema, eval_cfg)
    onnx_scores = evaluate.evaluate_model(onnx_model, tokenizer, examples, schema, eval_cfg)
    assert onnx_scores.evaluation.n == 4 and len(onnx_scores.answers) == 4
    # each answer's ids end at its first EOS, or at max_new_tokens without one (no padding after it)
    eos = tokenizer.eos_token_id
    assert all(eos not in ids[:-1] and (ids[-1] == eos or len(ids) == 16) for ids in torch_scores.token_ids)
    parity = export.check_parity(torch_model, onnx_model, tokenizer, examples, torch_scores.token_ids,
                                 onnx_scores.token_ids)
    assert parity.greedy_match_rate >= 0.99 and parity.max_abs_logit_diff < 1e-3
    assert parity.prompts == 4 and 4 <= parity.new_tokens <= 4 * 16
    # the ONNX model's loss on the reference answers matches the PyTorch model's
    torch_loss = torch_scores.evaluation.value("eval_loss")
    assert abs(onnx_scores.evaluation.value("eval_loss") - torch_loss) < 1e-3 and 0 < torch_loss < 20

    # a broken export (the final norm's weights negated) answers otherwise, and parity says so
    broken_dir = _with_negated_initializer(onnx_dir, tmp_path / "broken", "model.norm.weight")
    broken_model = ORTModelForCausalLM.from_pretrained(broken_dir)
    broken_scores = evaluate.evaluate_model(broken_model, tokenizer, examples, schema, eval_cfg)
    broken = export.check_parity(torch_model, broken_model, tokenizer, examples, torch_scores.token_ids,
                                 broken_scores.token_ids)
    assert broken.greedy_match_rate < 0.5 and broken.max_abs_logit_diff > 1.0, broken


def _with_negated_initializer(onnx_dir, out_dir, name: str):
    """A copy of an ONNX export with one weight negated."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(onnx_dir, out_dir)
    model = onnx.load(str(export.onnx_graph(out_dir)))
    weight = next(w for w in model.graph.initializer if w.name == name)
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), name))
    onnx.save(model, str(export.onnx_graph(out_dir)))
    return out_dir


def test_a_max_seq_length_that_leaves_no_answer_token_is_named(small_base, tmp_path):
    """Every prompt longer than train.max_seq_length: TRL would drop every record and fail on an empty sampler."""
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {"train": {"max_steps": 2, "eval_steps": 2, "max_seq_length": 17}})
    data = prepare(cfg)
    with pytest.raises(ValueError, match=r"every one of the 16 training records.*train.max_seq_length \(17 tokens\)"):
        train_trial(str(small_base), cfg.train, HParams(lora_rank=4, learning_rate=2e-3, epochs=1),
                    data.train[:16], data.val[:4], tmp_path / "trial")
