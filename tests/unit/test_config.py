from pathlib import Path

import pytest
import yaml

from lorafleet.config import ConfigError, find_domain_files, load_domain, parse_overrides
from tests.conftest import DOMAINS_DIR

BUNDLED = ["contracts", "medical", "financial", "legal", "story_summary"]


def test_every_shipped_config_loads():
    files = find_domain_files(DOMAINS_DIR)
    names = {load_domain(f).name for f in files}
    assert set(BUNDLED) <= names
    formats = {load_domain(f).data.format for f in files}
    assert formats == {"messages", "conversations", "alpaca"}


def _rewrite(path: Path, edit) -> Path:
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_malformed_yaml_names_file_and_line(domain_copy):
    path = domain_copy("contracts")
    lines = path.read_text().splitlines()
    lines.insert(3, "data: [unclosed")
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: invalid YAML"):
        load_domain(path)


def test_unknown_key_is_rejected_with_its_field(domain_copy):
    path = _rewrite(domain_copy("contracts"), lambda r: r["train"].update(max_stpes=3))
    with pytest.raises(ConfigError, match=r"contracts.yaml: train.max_stpes: Extra inputs are not permitted"):
        load_domain(path)


def test_mistyped_value_names_field(domain_copy):
    path = _rewrite(domain_copy("contracts"), lambda r: r["train"].update(batch_size="eight"))
    with pytest.raises(ConfigError, match=r"train.batch_size"):
        load_domain(path)


@pytest.mark.parametrize("bad_name", ["../x", "a/b", "", "Upper", "x" * 64, "a\x00b", ".hidden"])
def test_bad_domain_names_are_rejected(domain_copy, bad_name):
    path = _rewrite(domain_copy("contracts"), lambda r: r.update(name=bad_name))
    with pytest.raises(ConfigError, match=r"name: Value error, domain name"):
        load_domain(path)


def test_python_tags_are_not_constructed(domain_copy):
    path = domain_copy("contracts")
    path.write_text(path.read_text() + "\nextra: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match=r"contracts.yaml:\d+: invalid YAML: could not determine a constructor"):
        load_domain(path)


def test_missing_schema_file_is_named(domain_copy):
    path = _rewrite(domain_copy("contracts"), lambda r: r.update(output_schema="contracts/nope.json"))
    with pytest.raises(ConfigError, match=r"output_schema: file not found: .*contracts/nope.json"):
        load_domain(path)


def test_grid_search_rejects_a_range(domain_copy):
    path = _rewrite(domain_copy("contracts"),
                    lambda r: r["sweep"]["space"].update(learning_rate={"min": 1e-4, "max": 1e-2, "log": True}))
    with pytest.raises(ConfigError, match=r"grid search needs a list"):
        load_domain(path)
    ok = load_domain(path, {"sweep": {"search": "random", "num_samples": 3}})
    assert ok.sweep.space.learning_rate.log


def test_overrides_parse_yaml_values_and_numbers(domain_copy):
    overrides = parse_overrides(["sweep.num_samples=2", "train.max_steps=20", "sweep.space.learning_rate=[1e-9]",
                                 "train.backend=peft"])
    assert overrides == {"sweep": {"num_samples": 2, "space": {"learning_rate": [1e-9]}},
                         "train": {"max_steps": 20, "backend": "peft"}}
    cfg = load_domain(domain_copy("contracts"), overrides)
    assert cfg.sweep.space.learning_rate == [1e-9]
    assert cfg.train.max_steps == 20


def test_override_of_unknown_field_is_an_error(domain_copy):
    with pytest.raises(ConfigError, match=r"trian: Extra inputs"):
        load_domain(domain_copy("contracts"), parse_overrides(["trian.max_steps=1"]))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.max_steps"])


def test_unknown_domain_in_selection(tmp_path, domain_copy):
    domain_copy("contracts")
    with pytest.raises(ConfigError, match="no domain file for nope"):
        find_domain_files(tmp_path, ["nope"])


def test_shipped_profiles_apply_to_every_domain():
    from lorafleet.config import load_overrides_file

    profiles = sorted((DOMAINS_DIR.parent / "profiles").glob("*.yaml"))
    assert profiles
    for profile in profiles:
        overrides = load_overrides_file(profile)
        for f in find_domain_files(DOMAINS_DIR):
            cfg = load_domain(f, overrides)
            assert cfg.base_model == overrides.get("base_model", cfg.base_model)
