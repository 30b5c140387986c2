"""Lineage: what produced an artifact, recorded in every manifest and report.

Same config + same data + same seed -> same ``config_sha256`` and ``dataset_version``
(the config hash leaves out where the YAML file happened to be on disk, and who is told of the run)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

import lorafleet
from lorafleet.base_model import GGUF_SOURCE_MARKER
from lorafleet.config import DomainConfig
from lorafleet.train import HParams

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "optimum", "optimum-onnx", "onnxruntime", "ray",
            "unsloth", "bitsandbytes")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(package_file: str | Path | None = None) -> str | None:
    """The commit of lorafleet's own source checkout, when lorafleet runs from one: ``<root>/src/lorafleet``,
    ``<root>/pyproject.toml`` naming the project lorafleet, ``<root>`` the top of a git work tree. None for an
    installed copy (a wheel), even one that lies inside some other git repository."""
    package = Path(package_file or lorafleet.__file__).resolve().parent
    root = package.parents[1]
    if package != root / "src" / "lorafleet":
        return None
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != "lorafleet":
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None
    return lines[1]


def config_snapshot(cfg: DomainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude={"source_file", "notify"})  # neither changes what a run produces


def config_sha256(cfg: DomainConfig) -> str:
    return hashlib.sha256(json.dumps(config_snapshot(cfg), sort_keys=True).encode()).hexdigest()


def _feed(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def prompt_sha256(system_prompt: str | None, chat_template: str | None, context_template: str | None = None) -> str:
    """What every record is asked with besides its own text: the domain's system prompt and the tokenizer's chat
    template, and (a domain with context) the template its entity's context is written with (the context file's
    own sha256 is recorded beside it, ``Lineage.context_sha256``); a model's answers compare with another's only where
    this is the same."""
    parts = [system_prompt, chat_template, *([context_template] if context_template is not None else [])]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    _feed(digest, Path(path))
    return digest.hexdigest()


def weights_sha256(model_dir: str | Path) -> str | None:
    """sha256 over the model's weight files (sorted by name); None for a hub id not on disk. A base dequantized from
    a GGUF file is that file's sha256: the file is what was chosen, the dequantized copy is a cache."""
    model_dir = Path(model_dir)
    gguf_source = model_dir / GGUF_SOURCE_MARKER
    if gguf_source.is_file():
        return json.loads(gguf_source.read_text())["sha256"]
    files = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        _feed(digest, f)
    return digest.hexdigest()


class Inputs(BaseModel):
    """What a domain's published model was made from, as its lineage records it. A nightly run retrains a domain
    only when one of these differs from its latest published run's (``incremental.decide``)."""

    model_config = ConfigDict(frozen=True)
    config_sha256: str
    dataset_version: str
    base_model_sha256: str | None
    lorafleet_version: str

    @classmethod
    def of(cls, cfg: DomainConfig, dataset_version: str, base_path: str) -> Inputs:
        """``base_path``: the resolved base model (``base_model.resolve_base_model``)."""
        return cls(config_sha256=config_sha256(cfg), dataset_version=dataset_version,
                   base_model_sha256=weights_sha256(base_path), lorafleet_version=lorafleet.__version__)


class Lineage(BaseModel):
    """What produced a domain's published models: recorded in its manifest and report."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    lorafleet_version: str
    git_commit: str | None
    packages: dict[str, str]
    config: dict[str, Any]  # the config snapshot, as JSON
    config_sha256: str
    dataset_version: str
    split_counts: dict[str, int]
    golden_records: int
    seeds: dict[str, int]
    base_model: str
    base_model_sha256: str | None
    winner: HParams
    trial_count: int
    backend: str | None
    merged_sha256: str | None
    context_sha256: str | None = None  # a domain with context: the context file training and evaluation read
