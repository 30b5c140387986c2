"""The only code that talks to object storage (fsspec: a local folder, ``file://``, ``s3://``).

A domain's artifacts go under ``<storage>/runs/<run_id>/<domain>/``. Each object is uploaded,
then checked (size and sha256 read back); ``manifest.json`` listing every object is written
last, so a domain without a manifest is not published and a reader never follows half of one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import fsspec

from lorafleet.config import DOMAIN_NAME_RE

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_ID_RE = DOMAIN_NAME_RE  # run ids become keys too; same rule


class PublishError(RuntimeError):
    pass


class Storage:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/") or uri
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.root = self.root.rstrip("/")

    def url(self, key: str) -> str:
        """A user-facing URI for a key (``s3://bucket/...`` or a local path)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        path = f"{self.root}/{key}"
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def write_bytes(self, key: str, data: bytes) -> None:
        self.fs.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
        with self.fs.open(self.path(key), "wb") as handle:
            handle.write(data)

    def read_bytes(self, key: str) -> bytes:
        with self.fs.open(self.path(key), "rb") as handle:
            return handle.read()

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def domain_prefix(run_id: str, domain: str) -> str:
    for label, value in (("run id", run_id), ("domain", domain)):
        if not RUN_ID_RE.fullmatch(value):
            raise PublishError(f"{label} {value!r} is not a safe storage key (must match {RUN_ID_RE.pattern})")
    return f"runs/{run_id}/{domain}"


def publish_domain(storage: Storage, run_id: str, domain: str, local_dir: str | Path,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Upload every file under local_dir, verify it, then write the manifest. Returns the manifest."""
    prefix = domain_prefix(run_id, domain)
    local_dir = Path(local_dir)
    if storage.exists(f"{prefix}/{MANIFEST}"):
        raise PublishError(f"{storage.url(prefix)} is already published (run {run_id}, domain {domain})")
    objects = []
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        key = f"{prefix}/{rel}"
        sha, size = _sha256_file(path), path.stat().st_size
        storage.fs.makedirs(os.path.dirname(storage.path(key)), exist_ok=True)
        storage.fs.put_file(str(path), storage.path(key))
        got = storage.fs.size(storage.path(key))
        if got != size:
            raise PublishError(f"{storage.url(key)}: uploaded {got} bytes, expected {size}")
        objects.append({"key": rel, "bytes": size, "sha256": sha})
    for obj in objects:  # read back: what consumers will get is what we hashed
        if hashlib.sha256(storage.read_bytes(f"{prefix}/{obj['key']}")).hexdigest() != obj["sha256"]:
            raise PublishError(f"{storage.url(prefix + '/' + obj['key'])}: sha256 mismatch after upload")
    manifest = {"run_id": run_id, "domain": domain, "objects": objects, **(extra or {})}
    storage.write_json(f"{prefix}/{MANIFEST}", manifest)
    log.info("[%s] published %d objects to %s", domain, len(objects), storage.url(prefix))
    return manifest


def write_summary(storage: Storage, run_id: str, summary: dict[str, Any]) -> str:
    key = f"runs/{run_id}/summary.json"
    domain_prefix(run_id, "summary")  # validates the run id
    storage.write_json(key, summary)
    return storage.url(key)
