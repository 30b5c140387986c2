import runpy
import shutil
import sys

import pytest
import yaml

from lorafleet import cli
from lorafleet.cli import _force, build_parser, main
from tests.conftest import DOMAINS_DIR, REPO


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


def test_force_retrains_all_or_the_named_domains_and_rejects_unknown_names(capsys):
    def force(*args):
        return _force(build_parser().parse_args(["run", "--config-dir", str(DOMAINS_DIR), *args]))

    assert force() == frozenset() and force("--force") == "all" and force("--force", "--verbose") == "all"
    assert force("--force", "contracts,legal") == frozenset({"contracts", "legal"})
    assert main(["run", "--config-dir", str(DOMAINS_DIR), "--force", "contracts,nope"]) == 2
    assert "no domain file for nope" in capsys.readouterr().err


def test_nightly_job_passes_its_arguments_to_lorafleet_run(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    monkeypatch.setattr(sys, "argv", ["nightly.py", "--storage", "s3://b/p", "--force", "legal"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "jobs" / "nightly.py"), run_name="__main__")
    assert seen == [["run", "--storage", "s3://b/p", "--force", "legal", "--address", "auto"]]
