"""trust_remote_code reaches every loader of a base or merged model, off unless the domain opts in; weights that come
back from the run's storage, or are fetched, load from safetensors only and a pickle file among them is refused."""
import shutil
from pathlib import Path
from unittest.mock import MagicMock

import pytest

from lorafleet import evaluate, export, merge, pipeline, publish, train
from lorafleet.config import TrainConfig, load_domain, parse_overrides
from lorafleet.results import TrialOutcome
from lorafleet.safe_weights import UnsafeWeights
from lorafleet.train import HParams
from tests.conftest import DOMAINS_DIR


class TrainerReached(Exception):
    """Raised by the stand-in SFTTrainer: train_trial has loaded its base by then."""


@pytest.fixture
def loaders(monkeypatch):
    """Every from_pretrained (and Optimum's export) that lorafleet calls, replaced by a stand-in that records its
    keyword arguments: (loader name, kwargs) in call order."""
    import optimum.exporters.onnx
    import peft
    import transformers
    import trl
    from optimum.onnxruntime import ORTModelForCausalLM

    calls = []

    def recording(name, make=lambda *args, **kwargs: MagicMock()):
        def load(*args, **kwargs):
            calls.append((name, kwargs))
            return make(*args, **kwargs)
        return load

    def export(model_dir, output, **kwargs):
        Path(output).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recording("AutoModelForCausalLM"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recording("AutoTokenizer"))
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", recording("PeftModel"))
    monkeypatch.setattr(ORTModelForCausalLM, "from_pretrained", recording("ORTModelForCausalLM"))
    monkeypatch.setattr(optimum.exporters.onnx, "main_export", recording("main_export", export))
    monkeypatch.setattr(trl, "SFTTrainer", MagicMock(side_effect=TrainerReached))
    monkeypatch.setattr(train, "_loaded_base", None)  # this process's cached base: none, and none left behind
    return calls


def _folder(path: Path, *files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (path / name).write_bytes(b"stand-in weights")
    (path / "config.json").write_text("{}")
    return path


class _Checkpoint:
    """A Tune checkpoint of the winner's adapter, as merge_winner copies it out of the run's storage."""

    def __init__(self, folder: Path):
        self.folder = folder

    def to_directory(self, dest: str) -> None:
        shutil.copytree(self.folder, dest)


@pytest.mark.parametrize("opt_in", [[], ["trust_remote_code=true"]], ids=["default", "opted-in"])
def test_trust_remote_code_is_off_by_default_and_reaches_every_loader(loaders, tmp_path, opt_in):
    base = _folder(tmp_path / "base", "model.safetensors")
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", parse_overrides([f"base_model={base}", *opt_in]))
    trust = cfg.trust_remote_code
    assert trust is bool(opt_in)
    adapter = _folder(tmp_path / "adapter", "adapter_model.safetensors")
    merged = _folder(tmp_path / "merged", "model.safetensors")

    with pytest.raises(TrainerReached):  # the trial's base and tokenizer are loaded before its trainer is made
        train.train_trial(str(base), TrainConfig(backend="peft", load_in_4bit=False, gradient_checkpointing=False),
                          HParams(8, 1e-3, 1), [], [], tmp_path / "trial", trust_remote_code=trust)
    merge.merge_16bit(str(base), adapter, _folder(tmp_path / "merge-out"), trust_remote_code=trust)
    pipeline.merge_winner(cfg, TrialOutcome(hparams=HParams(8, 1e-3, 1), checkpoint=_Checkpoint(adapter)),
                          _folder(tmp_path / "domain" / "merged").parent)  # the recipe passes the domain's setting
    evaluate.load_torch_model(str(merged), safetensors_only=True, trust_remote_code=trust)
    evaluate.load_torch_model(str(base), adapter=str(adapter), trust_remote_code=trust)
    onnx = export.to_onnx(merged, tmp_path / "onnx", trust_remote_code=trust)
    evaluate.load_onnx_model(str(onnx), trust_remote_code=trust)

    taking_the_flag = [(name, kwargs) for name, kwargs in loaders if name != "PeftModel"]  # adapters hold no code
    assert [name for name, _ in taking_the_flag] == [
        "AutoModelForCausalLM", "AutoTokenizer",  # train_trial
        "AutoModelForCausalLM", "AutoTokenizer",  # merge_16bit
        "AutoModelForCausalLM", "AutoTokenizer",  # merge_winner
        "AutoModelForCausalLM", "AutoTokenizer",  # the merged model
        "AutoModelForCausalLM", "AutoTokenizer",  # the adapter on its base
        "main_export", "ORTModelForCausalLM", "AutoTokenizer"]
    assert all(kwargs["trust_remote_code"] is trust for _, kwargs in taking_the_flag), taking_the_flag
    assert taking_the_flag[6][1]["use_safetensors"] is True  # the merged model: safetensors only


@pytest.mark.parametrize("pickled", ["adapter_model.bin", "training_args.bin", "optimizer.pt"])
def test_an_adapter_from_storage_with_a_pickle_file_is_refused_before_loading(loaders, tmp_path, pickled):
    adapter = _folder(tmp_path / "adapter", "adapter_model.safetensors", pickled)
    with pytest.raises(UnsafeWeights, match=rf"adapter: holds pickle files \({pickled}\), which run code when loaded"):
        merge.merge_16bit("tiny", adapter, tmp_path / "merged")
    with pytest.raises(UnsafeWeights, match=pickled):
        evaluate.load_torch_model("tiny", adapter=str(adapter))
    assert loaders == []  # nothing was loaded


def test_a_merged_model_with_a_pickle_file_or_without_safetensors_is_refused(loaders, tmp_path):
    pickled = _folder(tmp_path / "pickled", "model.safetensors", "pytorch_model.bin")
    with pytest.raises(UnsafeWeights, match=r"pickled: holds pickle files \(pytorch_model.bin\)"):
        evaluate.load_torch_model(str(pickled), safetensors_only=True)
    with pytest.raises(UnsafeWeights, match="pytorch_model.bin"):
        export.to_onnx(pickled, tmp_path / "onnx")
    with pytest.raises(UnsafeWeights, match=r"bare: no .safetensors weights in it"):
        evaluate.load_torch_model(str(_folder(tmp_path / "bare")), safetensors_only=True)
    assert loaders == []


def test_fetch_refuses_a_published_folder_holding_a_pickle_file(tmp_path):
    domain = tmp_path / "domain"
    _folder(domain / "merged", "model.safetensors", "pytorch_model.bin")
    _folder(domain / "onnx", "model.onnx")
    storage = publish.Storage(str(tmp_path / "store"))
    publish.publish_domain(storage, "run1", "contracts", domain)
    with pytest.raises(publish.PublishError, match=r"merged/ holds pickle files \(merged/pytorch_model.bin\)"):
        publish.fetch(storage.uri, "contracts", tmp_path / "merged-copy", run_id="run1", artifact="merged")
    assert not (tmp_path / "merged-copy").exists()
    onnx = publish.fetch(storage.uri, "contracts", tmp_path / "onnx-copy", run_id="run1")
    assert (onnx / "model.onnx").is_file()  # the ONNX folder beside it holds none
