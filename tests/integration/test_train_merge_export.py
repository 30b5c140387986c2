"""One trial on a very small base, then merge, ONNX export and parity: every stage real."""
import json

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
    torch_model, tokenizer = evaluate.load_torch_model(str(merged))
    parity = export.check_parity(torch_model, onnx_model, tokenizer, data.test[:3], new_tokens=12)
    assert parity.greedy_match_rate >= 0.99
    assert parity.max_abs_logit_diff < 1e-3
    schema = json.loads(open(cfg.schema_path).read())
    summary, rows = evaluate.evaluate_model(onnx_model, tokenizer, data.test[:4], schema,
                                            cfg.eval.model_copy(update={"max_new_tokens": 16, "batch_size": 4}))
    assert summary.n == 4 and len(rows) == 4
    # the ONNX model's loss on the reference answers matches the PyTorch model's
    torch_loss = evaluate.completion_loss(torch_model, tokenizer, data.test[:4])["eval_loss"]
    assert abs(summary.value("eval_loss") - torch_loss) < 1e-3 and 0 < torch_loss < 20
