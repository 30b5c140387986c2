import shutil

import yaml

from lorafleet.cli import main
from tests.conftest import DOMAINS_DIR


def test_validate_passes_on_bundled_domains(capsys):
    assert main(["validate", "--config-dir", str(DOMAINS_DIR)]) == 0
    out = capsys.readouterr().out
    for name in ("contracts", "medical", "financial", "legal", "story_summary"):
        assert f"ok   {name}:" in out


def test_validate_lists_each_bad_domain_and_fails(tmp_path, capsys):
    shutil.copy(DOMAINS_DIR / "legal.yaml", tmp_path)
    shutil.copytree(DOMAINS_DIR / "legal", tmp_path / "legal")
    (tmp_path / "legal" / "data.jsonl").open("a").write("{broken\n")
    raw = yaml.safe_load((DOMAINS_DIR / "medical.yaml").read_text())
    raw["name"] = "../escape"
    (tmp_path / "medical.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", "--config-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL legal:" in out and "data.jsonl:" in out and "not valid JSON" in out
    assert "FAIL medical:" in out and "domain name '../escape'" in out


def test_unknown_domain_selection_exits_2(capsys):
    assert main(["validate", "--config-dir", str(DOMAINS_DIR), "--domains", "nope"]) == 2
    assert "no domain file for nope" in capsys.readouterr().err
