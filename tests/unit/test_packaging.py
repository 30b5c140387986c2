"""lorafleet installed from a wheel (not editable): the tiny base's corpus ships inside the package, and
lineage records a git commit only for lorafleet's own source checkout, not for whatever repository happens
to enclose the installation."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lorafleet
from lorafleet import lineage

ROOT = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_installed_copy_has_its_corpus_and_records_no_foreign_commit(tmp_path):
    source = tmp_path / "source"  # built from a copy: an in-tree build writes build/ and *.egg-info
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True, timeout=120)
    shutil.rmtree(source)
    _git(tmp_path, "init", "-q")  # the installation sits inside some other git repository
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "not lorafleet")
    script = textwrap.dedent("""
        import json, lorafleet
        from lorafleet import base_model, lineage
        print(json.dumps({"file": lorafleet.__file__, "corpus": str(base_model.DEFAULT_CORPUS),
                          "corpus_bytes": base_model.DEFAULT_CORPUS.stat().st_size
                          if base_model.DEFAULT_CORPUS.is_file() else 0,
                          "commit": lineage.git_commit()}))
    """)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(site)
    corpus_shipped = Path(seen["corpus"]).is_relative_to(site / "lorafleet") and seen["corpus_bytes"] > 0
    assert {"corpus shipped": corpus_shipped, "commit": seen["commit"]} == {"corpus shipped": True, "commit": None}


def _tree(root: Path, pyproject: str | None, package: str = "src/lorafleet") -> Path:
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    _git(root, "init", "-q")
    _git(root, "commit", "-q", "--allow-empty", "-m", "x")
    return root / package / "__init__.py"


@pytest.mark.parametrize("pyproject, package", [
    (None, "src/lorafleet"),                                      # no project file
    ('[project]\nname = "someone-else"\n', "src/lorafleet"),        # another project's checkout
    ('[project]\nname = "lorafleet"\n', "lib/lorafleet"),           # not where lorafleet's sources live
    ("[project\nname = lorafleet", "src/lorafleet"),                # unreadable
])
def test_no_commit_outside_lorafleets_own_checkout(tmp_path, pyproject, package):
    assert lineage.git_commit(_tree(tmp_path, pyproject, package)) is None


def test_commit_of_lorafleets_own_checkout(tmp_path):
    package_file = _tree(tmp_path, '[project]\nname = "lorafleet"\nversion = "0"\n')
    assert lineage.git_commit(package_file) == _git(tmp_path, "rev-parse", "HEAD")
    here = Path(lorafleet.__file__).resolve().parents[2]
    if (here / ".git").exists():
        assert lineage.git_commit() == _git(here, "rev-parse", "HEAD")


def test_the_corpus_is_package_data():
    from lorafleet.base_model import DEFAULT_CORPUS

    assert DEFAULT_CORPUS.is_relative_to(Path(lorafleet.__file__).resolve().parent) and DEFAULT_CORPUS.is_file()
    assert not (ROOT / "configs" / "tiny_base" / "corpus.txt").exists()


def test_no_commit_for_a_source_tree_inside_another_repository(tmp_path):
    """An unpacked sdist (lorafleet's layout, no .git of its own) in some other checkout."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "not lorafleet")
    tree = tmp_path / "lorafleet-0.1.0"
    (tree / "src" / "lorafleet").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "lorafleet"\n')
    assert lineage.git_commit(tree / "src" / "lorafleet" / "__init__.py") is None
