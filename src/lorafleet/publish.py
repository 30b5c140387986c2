"""The only code that talks to object storage (fsspec: a local folder, ``file://``, ``s3://``).

Layout under a storage root:
    runs/<run_id>/summary.json
    runs/<run_id>/tune/...                       Ray Tune results and trial checkpoints
    runs/<run_id>/<domain>/...                   a domain's objects; its staging area until...
    runs/<run_id>/<domain>/manifest.json         ...written last, by exclusive create: now it is published
    runs/<run_id>/<domain>/review/...            human review, days later (lorafleet review): beside the manifest,
                                                 never in it: key-<export>.json and ratings-<export>.json (each
                                                 created once), verdict.json and report.{html,md} (rewritten)
    domains/<domain>/latest.json                 -> the newest published run whose gate passed
    domains/<domain>/history.json, history.html  every run of the domain, one entry each (appended after each run)

Readers follow ``latest.json`` -> ``manifest.json`` -> objects, and never list prefixes, so an upload
that stopped half way is invisible to them. ``latest.json`` is replaced only if unchanged since it was read
(S3 If-Match; locally under a lock, by rename), so concurrent promoters cannot move it back to an older run.
Credentials come from the environment or instance role (boto's own chain); nothing here reads, logs or
stores them.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from lorafleet.config import DOMAIN_NAME_RE
from lorafleet.lineage import sha256_file
from lorafleet.safe_weights import pickle_files

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DOMAIN_SUMMARY = "domain_summary.json"
FETCH_RECORD = "lorafleet_source.json"  # where a fetched folder came from
RUN_ID_RE = DOMAIN_NAME_RE  # run ids become keys too; same rule
PROMOTE_ATTEMPTS = 10  # an attempt fails only when another promoter moved the pointer, which each does once
HISTORY_ATTEMPTS = 10  # likewise: an append fails only when another run appended in between


class PublishError(RuntimeError):
    pass


class AlreadyPublished(PublishError):
    pass


class VerifyError(PublishError):
    pass


def _check_name(label: str, value: str) -> str:
    if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value):
        raise PublishError(f"{label} {value!r} is not a safe storage key (must match {RUN_ID_RE.pattern})")
    return value


def domain_prefix(run_id: str, domain: str) -> str:
    return f"runs/{_check_name('run id', run_id)}/{_check_name('domain', domain)}"


def run_prefix(run_id: str) -> str:
    return f"runs/{_check_name('run id', run_id)}"


def latest_key(domain: str) -> str:
    return f"domains/{_check_name('domain', domain)}/latest.json"


def history_key(domain: str, name: str = "history.json") -> str:
    return f"domains/{_check_name('domain', domain)}/{name}"


class Storage:
    """A storage root and its filesystem. ``fs`` may be given (tests wrap one to inject faults)."""

    def __init__(self, uri: str, fs: fsspec.AbstractFileSystem | None = None):
        self.uri = uri.rstrip("/")
        found_fs, root = fsspec.core.url_to_fs(self.uri)
        self.fs = fs or found_fs
        self.root = root.rstrip("/")
        self.is_local = isinstance(found_fs, LocalFileSystem)

    def url(self, key: str) -> str:
        """A user-facing URI for a key (``s3://bucket/...``, or a local path)."""
        if self.is_local:
            return f"{self.root}/{key}"
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{self.root}/{key}"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        if self.is_local:
            os.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
        self.fs.pipe_file(self.path(key), data)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, _json_bytes(obj))

    def create_exclusive(self, key: str, data: bytes) -> None:
        """Write key only if it does not exist, atomically (S3 ``If-None-Match: *``; O_EXCL locally).
        Raises FileExistsError when another writer got there first."""
        if self.is_local:
            os.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
            with open(self.path(key), "xb") as handle:
                handle.write(data)
            return
        try:
            self.fs.pipe_file(self.path(key), data, mode="create")
        except FileExistsError:
            raise
        except OSError as exc:
            if _precondition_failed(exc):
                raise FileExistsError(self.url(key)) from exc
            raise

    def read_json_versioned(self, key: str) -> tuple[Any, str | None]:
        """(object, version token), or (None, None) when key does not exist; ``replace_if_unchanged`` checks the
        token. On object storage it is the ETag, read before the body: a write in between can only make the
        body newer than its token, and then the conditional replace fails instead of acting on stale bytes.
        Locally it is the sha256 of the bytes read."""
        path = self.path(key)
        try:
            if self.is_local:
                data = self.fs.cat_file(path)
                return json.loads(data), hashlib.sha256(data).hexdigest()
            etag = self.fs.info(path, refresh=True)["ETag"]  # refresh: s3fs may answer info from its listing cache
            return json.loads(self.fs.cat_file(path)), etag
        except FileNotFoundError:
            return None, None

    def replace_if_unchanged(self, key: str, data: bytes, token: str | None) -> bool:
        """Write key only if it still has the version ``token`` from ``read_json_versioned`` (None: only if it
        still does not exist), atomically. False when another writer changed it first."""
        path = self.path(key)
        if self.is_local:
            return _replace_local_if_unchanged(path, data, token)
        try:
            if token is None:
                self.fs.pipe_file(path, data, mode="create")  # If-None-Match: *
            else:
                self.fs.pipe_file(path, data, IfMatch=token)
        except FileExistsError:
            return False
        except OSError as exc:
            if _conditional_write_lost(exc):
                return False
            raise
        return True

    def upload_file(self, local: Path, key: str) -> None:
        if self.is_local:
            os.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
        self.fs.put_file(str(local), self.path(key))

    def tune_location(self, run_id: str) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Ray Tune, under this run's prefix. A local root gives a
        plain path; any other filesystem is handed to pyarrow through fsspec, so one set of settings
        (endpoint, credentials from the environment) serves both."""
        key = f"{run_prefix(run_id)}/tune"
        if self.is_local:
            return str(Path(self.path(key)).resolve()), None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return self.path(key), PyFileSystem(FSSpecHandler(self.fs))


def _server_answer(exc: OSError) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of the server's answer behind an s3fs error: s3fs keeps botocore's error as
    the cause. Error codes decide, never the text (a run id or request id may contain "412")."""
    response = getattr(exc.__cause__, "response", None)
    if not isinstance(response, dict):
        return None, None
    return response.get("Error", {}).get("Code"), response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _precondition_failed(exc: OSError) -> bool:
    """Whether the server answered 412 Precondition Failed. s3fs turns that into FileExistsError only when the
    answer names the If-None-Match condition, else into a plain OSError."""
    code, status = _server_answer(exc)
    return code == "PreconditionFailed" or status == 412


def _conditional_write_lost(exc: OSError) -> bool:
    """Whether a conditional write failed because another writer got there first: 412, or S3's 409
    ConditionalRequestConflict (a concurrent conditional write on the same key; AWS says retry)."""
    return _precondition_failed(exc) or _server_answer(exc)[0] == "ConditionalRequestConflict"


def _replace_local_if_unchanged(path: str, data: bytes, token: str | None) -> bool:
    """Compare and write under an exclusive lock on a file beside ``path`` (flock: other threads and processes
    wait for it). The bytes go to a temporary file renamed over ``path``, so a reader sees the old file or the
    new one, never half of one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "ab") as lock:  # closing it releases the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except FileNotFoundError:
            current = None
        if current != token:
            return False
        temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}")
        try:
            with open(temp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
    return True


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False).encode("utf-8")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- producer side ------------------------------------------------------------------------------

def is_published(storage: Storage, run_id: str, domain: str) -> bool:
    return storage.exists(f"{domain_prefix(run_id, domain)}/{MANIFEST}")


def publish_domain(storage: Storage, run_id: str, domain: str, local_dir: str | Path,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Upload every file under local_dir, verify size and sha256 of each stored object, then create the
    manifest (exclusively: of two publishers of one run and domain, exactly one succeeds)."""
    prefix = domain_prefix(run_id, domain)
    local_dir = Path(local_dir)
    if is_published(storage, run_id, domain):
        raise AlreadyPublished(f"run {run_id}, domain {domain}: already published at {storage.url(prefix)}")
    objects = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if rel == MANIFEST:
            continue
        objects.append({"key": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        storage.upload_file(path, f"{prefix}/{rel}")
    problems = verify_objects(storage, prefix, objects)
    if problems:
        raise PublishError(f"run {run_id}, domain {domain}: upload did not verify: {'; '.join(problems)}")
    manifest = {"run_id": run_id, "domain": domain, "published_at": _now(), **(extra or {}), "objects": objects}
    try:
        storage.create_exclusive(f"{prefix}/{MANIFEST}", _json_bytes(manifest))
    except FileExistsError as exc:
        raise AlreadyPublished(f"run {run_id}, domain {domain}: another publisher wrote "
                               f"{storage.url(prefix + '/' + MANIFEST)} first; this one stopped") from exc
    log.info("[%s] published %d objects to %s", domain, len(objects), storage.url(prefix))
    return manifest


def _recency(record: dict[str, Any]) -> tuple[str, str]:
    """Orders published runs (a manifest, or the pointer to one) totally: by published_at (UTC, to the
    second), then by run id, so two runs published in the same second are never a tie."""
    return record.get("published_at", ""), record["run_id"]


def promote(storage: Storage, run_id: str, domain: str) -> bool:
    """Point ``domains/<domain>/latest.json`` at this run's manifest, unless it already points at this run or a
    newer one (``_recency``). Only call for a domain whose gate passed. Returns whether the pointer moved.
    The pointer is replaced only if nobody moved it since it was read; else it is read and decided again, so
    of promoters running at once the newest run ends up latest."""
    manifest_key = f"{domain_prefix(run_id, domain)}/{MANIFEST}"
    manifest = storage.read_json(manifest_key)  # the pointer never names a manifest that is not there
    pointer_key = latest_key(domain)
    for _ in range(PROMOTE_ATTEMPTS):
        current, token = storage.read_json_versioned(pointer_key)
        if current is not None and _recency(current) >= _recency(manifest):
            if current["run_id"] != run_id:
                log.info("[%s] latest.json stays at run %s (a newer run)", domain, current["run_id"])
            return False
        pointer = {"domain": domain, "run_id": run_id, "manifest": manifest_key,
                   "published_at": manifest["published_at"], "promoted_at": _now()}
        if storage.replace_if_unchanged(pointer_key, _json_bytes(pointer), token):
            log.info("[%s] latest.json -> run %s", domain, run_id)
            return True
        log.info("[%s] latest.json moved while promoting run %s; deciding again", domain, run_id)
    raise PublishError(f"run {run_id}, domain {domain}: {storage.url(pointer_key)} kept moving; "
                       f"gave up after {PROMOTE_ATTEMPTS} attempts")


def _sweep_record_key(run_id: str, name: str) -> str:
    return f"{run_prefix(run_id)}/tune/{_check_name('sweep', name)}.lorafleet.json"  # beside Tune's own folder


def write_sweep_record(storage: Storage, run_id: str, name: str, fingerprints: dict[str, str]) -> None:
    """Which domains (and which form of each: its fingerprint) the run's Tune experiment ``name`` trains."""
    storage.write_json(_sweep_record_key(run_id, name), {"experiment": name, "fingerprints": fingerprints})


def read_sweep_records(storage: Storage, run_id: str) -> dict[str, dict[str, str]]:
    """Every Tune experiment an earlier attempt of the run started (``sweep-1``, ``sweep-2``... in order):
    name -> {domain: fingerprint}."""
    records = {}
    while storage.exists(key := _sweep_record_key(run_id, f"sweep-{len(records) + 1}")):
        record = storage.read_json(key)
        records[record["experiment"]] = record["fingerprints"]
    return records


def record_trial_start(storage: Storage, run_id: str, experiment: str, trial_id: str, step: int) -> list[int]:
    """Add one start of a trial (at the checkpoint ``step``; 0 from scratch) to its record beside the run's Tune
    experiment, whichever node it runs on; the steps of every start so far, the first one first. One attempt of a
    trial runs at a time, so a plain rewrite cannot lose another's start."""
    key = f"{run_prefix(run_id)}/tune/{_check_name('sweep', experiment)}.starts/{_check_name('trial', trial_id)}.json"
    starts = [*(storage.read_json(key) if storage.exists(key) else []), step]
    storage.write_json(key, starts)
    return starts


def record_history(storage: Storage, domain: str, entry: dict[str, Any],
                   render_html: Callable[[list[dict[str, Any]]], str]) -> list[dict[str, Any]]:
    """Add a run's entry (``run_id`` and ``date`` keys) to the domain's history.json, replacing an entry of the same
    run id (a rerun), runs in (date, run id) order; then write history.html rendered from it. The JSON is replaced
    only if unchanged since read, so runs appending at once lose nothing; the page is rendered again while another
    run's append made it stale, so the last page written shows every run. Returns the runs written."""
    key = history_key(domain)
    for _ in range(HISTORY_ATTEMPTS):
        current, token = storage.read_json_versioned(key)
        others = [e for e in (current or {"runs": []})["runs"] if e["run_id"] != entry["run_id"]]
        runs = sorted([*others, entry], key=lambda e: (e["date"], e["run_id"]))
        if storage.replace_if_unchanged(key, _json_bytes({"domain": domain, "runs": runs}), token):
            break
        log.info("[%s] history.json changed while adding run %s; adding again", domain, entry["run_id"])
    else:
        raise PublishError(f"run {entry['run_id']}, domain {domain}: {storage.url(key)} kept changing; "
                           f"gave up after {HISTORY_ATTEMPTS} attempts")
    for _ in range(HISTORY_ATTEMPTS):
        storage.write_bytes(history_key(domain, "history.html"), render_html(runs).encode("utf-8"))
        if (latest := read_history(storage, domain)) == runs:
            return runs
        runs = latest
    raise PublishError(f"domain {domain}: {storage.url(key)} kept changing while history.html was written")


def read_history(storage: Storage, domain: str) -> list[dict[str, Any]]:
    """The domain's runs, oldest first; empty when it has no history yet."""
    history, _ = storage.read_json_versioned(history_key(domain))  # read afresh, not from a listing cache
    return history["runs"] if history else []


def summary_url(storage: Storage, run_id: str) -> str:
    return storage.url(f"{run_prefix(run_id)}/summary.json")


def write_summary(storage: Storage, run_id: str, summary: dict[str, Any]) -> str:
    key = f"{run_prefix(run_id)}/summary.json"
    storage.write_json(key, summary)
    return storage.url(key)


def write_run_file(storage: Storage, run_id: str, name: str, text: str) -> str:
    """A run-level file beside summary.json (the run's index.html)."""
    key = f"{run_prefix(run_id)}/{name}"
    storage.write_bytes(key, text.encode("utf-8"))
    return storage.url(key)


def read_run_summary(uri: str) -> dict[str, Any]:
    """A run's summary.json, from ``<storage>/runs/<run_id>``."""
    root, run_id, _ = split_uri(uri)
    storage = Storage(root)
    key = f"{run_prefix(run_id)}/summary.json"
    if not storage.exists(key):
        raise PublishError(f"{storage.url(key)}: no run summary there")
    return storage.read_json(key)


def read_domain_summary(storage: Storage, run_id: str, domain: str) -> dict[str, Any]:
    return storage.read_json(f"{domain_prefix(run_id, domain)}/{DOMAIN_SUMMARY}")


# ---- human review (lorafleet review), beside a published domain ------------------------------------------------

REVIEW_DIR = "review"
REVIEW_FILES = ("verdict.json", "report.html", "report.md")  # rewritten at every import


def review_key(run_id: str, domain: str, name: str) -> str:
    return f"{domain_prefix(run_id, domain)}/{REVIEW_DIR}/{name}"


def _export_file(run_id: str, domain: str, kind: str, export_id: str) -> str:
    return review_key(run_id, domain, f"{kind}-{_check_name('export id', export_id)}.json")


def read_published_object(storage: Storage, run_id: str, domain: str, key: str) -> bytes:
    """One object of a published domain (``key`` relative to the domain, e.g. ``eval/test-base.jsonl``), checked
    against its manifest: a domain without a manifest, an object it does not list or bytes that differ are errors."""
    prefix = domain_prefix(run_id, domain)
    if not is_published(storage, run_id, domain):
        raise PublishError(f"run {run_id}, domain {domain}: not published (no {storage.url(prefix + '/' + MANIFEST)})")
    listed = {o["key"]: o for o in read_manifest(storage, run_id, domain)["objects"]}
    if key not in listed:
        raise PublishError(f"run {run_id}, domain {domain}: the manifest lists no {key}")
    data = storage.read_bytes(f"{prefix}/{key}")
    if hashlib.sha256(data).hexdigest() != listed[key]["sha256"]:
        raise VerifyError(f"{storage.url(prefix + '/' + key)}: sha256 differs from the manifest")
    return data


def write_review_key(storage: Storage, run_id: str, domain: str, export_id: str, key: dict[str, Any]) -> str:
    """An export's key (which answer is which model's), created once; returns its URI."""
    path = _export_file(run_id, domain, "key", export_id)
    try:
        storage.create_exclusive(path, _json_bytes(key))
    except FileExistsError as exc:
        raise PublishError(f"{storage.url(path)}: an export with this id exists already") from exc
    return storage.url(path)


def read_review_key(storage: Storage, run_id: str, domain: str, export_id: str) -> dict[str, Any] | None:
    path = _export_file(run_id, domain, "key", export_id)
    return storage.read_json(path) if storage.exists(path) else None


def read_ratings(storage: Storage, run_id: str, domain: str, export_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """An export's imported ratings and their version token (None, None before its import)."""
    return storage.read_json_versioned(_export_file(run_id, domain, "ratings", export_id))


def write_ratings(storage: Storage, run_id: str, domain: str, export_id: str, ratings: dict[str, Any],
                  token: str | None) -> str:
    """Write an export's ratings in one piece: created if ``token`` is None, else replacing the version read with
    that token; either fails (PublishError) when another import wrote them in between. Returns their URI."""
    path = _export_file(run_id, domain, "ratings", export_id)
    if not storage.replace_if_unchanged(path, _json_bytes(ratings), token):
        raise PublishError(f"{storage.url(path)}: another import wrote these ratings meanwhile; nothing written")
    return storage.url(path)


def list_ratings(storage: Storage, run_id: str, domain: str) -> list[dict[str, Any]]:
    """Every export's imported ratings for the run's domain, by export id. Listed: each ratings file is created whole
    (one object), so a listing never shows half of one."""
    folder = storage.path(review_key(run_id, domain, ""))
    try:
        names = sorted(os.path.basename(n.rstrip("/")) for n in storage.fs.ls(folder, detail=False, refresh=True))
    except FileNotFoundError:
        return []
    return [storage.read_json(review_key(run_id, domain, n)) for n in names
            if n.startswith("ratings-") and n.endswith(".json")]


def write_review_file(storage: Storage, run_id: str, domain: str, name: str, data: bytes) -> str:
    """The review's verdict and report (``REVIEW_FILES``), rewritten at each import; returns the URI."""
    if name not in REVIEW_FILES:
        raise PublishError(f"{name}: not a review file ({', '.join(REVIEW_FILES)})")
    path = review_key(run_id, domain, name)
    storage.write_bytes(path, data)
    return storage.url(path)


def read_review_verdict(storage: Storage, run_id: str, domain: str) -> dict[str, Any] | None:
    """The gate as the latest review import decided it (verdict.json), None if nobody reviewed the run's domain."""
    path = review_key(run_id, domain, "verdict.json")
    return storage.read_json(path) if storage.exists(path) else None


# ---- consumer side ------------------------------------------------------------------------------

def verify_objects(storage: Storage, prefix: str, objects: list[dict[str, Any]]) -> list[str]:
    """Re-read every object and compare bytes and sha256; a list of problems (empty when all match)."""
    problems = []
    for obj in objects:
        key = f"{prefix}/{obj['key']}"
        try:
            data = storage.read_bytes(key)
        except FileNotFoundError:
            problems.append(f"{storage.url(key)}: missing")
            continue
        if len(data) != obj["bytes"]:
            problems.append(f"{storage.url(key)}: {len(data)} bytes, manifest says {obj['bytes']}")
        elif hashlib.sha256(data).hexdigest() != obj["sha256"]:
            problems.append(f"{storage.url(key)}: sha256 differs from the manifest")
    return problems


def split_uri(uri: str) -> tuple[str, str, str | None]:
    """``<root>/runs/<run_id>[/<domain>]`` -> (root, run_id, domain or None)."""
    head, sep, tail = uri.rstrip("/").rpartition("/runs/")
    if not sep or not head:
        raise PublishError(f"{uri}: expected <storage>/runs/<run_id>[/<domain>]")
    parts = tail.split("/")
    if len(parts) > 2:
        raise PublishError(f"{uri}: expected <storage>/runs/<run_id>[/<domain>]")
    return head, _check_name("run id", parts[0]), _check_name("domain", parts[1]) if len(parts) == 2 else None


def verify(uri: str) -> list[str]:
    """Problems found re-hashing a run's (every published domain's) or one domain's objects."""
    root, run_id, domain = split_uri(uri)
    storage = Storage(root)
    if domain:
        domains = [domain]
    else:
        listing = storage.fs.ls(storage.path(run_prefix(run_id)), detail=True)
        domains = sorted(os.path.basename(e["name"].rstrip("/")) for e in listing
                         if e["type"] == "directory" and os.path.basename(e["name"].rstrip("/")) != "tune")
        if not domains:
            return [f"{storage.url(run_prefix(run_id))}: no domains"]
    problems = []
    for d in domains:
        prefix = domain_prefix(run_id, d)
        if not storage.exists(f"{prefix}/{MANIFEST}"):
            problems.append(f"{storage.url(prefix)}: no manifest (not published)")
            continue
        problems += verify_objects(storage, prefix, storage.read_json(f"{prefix}/{MANIFEST}")["objects"])
    return problems


def read_manifest(storage: Storage, run_id: str, domain: str) -> dict[str, Any]:
    """The manifest of a domain the run published (gated or not), with its lineage."""
    return storage.read_json(f"{domain_prefix(run_id, domain)}/{MANIFEST}")


def latest_manifest(storage: Storage, domain: str) -> dict[str, Any] | None:
    """The manifest of the domain's latest published run (``latest.json`` -> ``manifest.json``), with its
    lineage; None if the domain was never promoted."""
    if not storage.exists(latest_key(domain)):
        return None
    return storage.read_json(storage.read_json(latest_key(domain))["manifest"])


def fetch(storage_uri: str, domain: str, dest: str | Path, run_id: str | None = None,
          artifact: str = "onnx") -> Path:
    """Download one artifact folder of a domain (default: the ONNX model of ``latest``), verifying each
    object's sha256 against the manifest; a folder holding a pickle file is refused. The folder appears at ``dest``
    only once complete."""
    storage = Storage(storage_uri)
    if run_id is None:
        if not storage.exists(latest_key(domain)):
            raise PublishError(f"{storage.url(latest_key(domain))}: no published run for domain {domain}")
        run_id = storage.read_json(latest_key(domain))["run_id"]
    prefix = domain_prefix(run_id, domain)
    if not storage.exists(f"{prefix}/{MANIFEST}"):
        raise PublishError(f"run {run_id}, domain {domain}: not published (no manifest)")
    manifest = storage.read_json(f"{prefix}/{MANIFEST}")
    wanted = [o for o in manifest["objects"] if o["key"].startswith(f"{artifact}/")]
    if not wanted:
        raise PublishError(f"run {run_id}, domain {domain}: no {artifact}/ objects in the manifest")
    pickled = pickle_files(o["key"] for o in wanted)
    if pickled:  # refused before anything is downloaded: a consumer would load them
        raise PublishError(f"run {run_id}, domain {domain}: {artifact}/ holds pickle files ({', '.join(pickled)}), "
                           "which run code when loaded; lorafleet fetches safetensors and ONNX weights only")
    dest = Path(dest)
    if dest.exists():
        raise PublishError(f"{dest} already exists; fetch into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for obj in wanted:
            data = _verified_bytes(storage, prefix, obj)
            target = staging / obj["key"][len(artifact) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / FETCH_RECORD).write_text(json.dumps(
            {"storage": storage_uri, "run_id": run_id, "domain": domain, "fetched_at": _now(),
             "manifest_published_at": manifest["published_at"]}, indent=2))
        staging.rename(dest)
    except BaseException:  # a failed or interrupted fetch leaves no half-filled folder behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _verified_bytes(storage: Storage, prefix: str, obj: dict[str, Any]) -> bytes:
    """A manifest's object, read and checked against its sha256."""
    data = storage.read_bytes(f"{prefix}/{obj['key']}")
    if hashlib.sha256(data).hexdigest() != obj["sha256"]:
        raise VerifyError(f"{storage.url(prefix + '/' + obj['key'])}: sha256 differs from the manifest")
    return data


def read_published_data(storage: Storage, run_id: str, domain: str) -> dict[str, bytes]:
    """The prepared data a run published for a domain, ``data/`` of its folder (each split's JSONL and
    ``dataset_manifest.json``): name -> bytes, found through the manifest and checked against its sha256."""
    prefix = domain_prefix(run_id, domain)
    if not storage.exists(f"{prefix}/{MANIFEST}"):
        if not storage.exists(run_prefix(run_id)):
            raise PublishError(f"{storage.url(run_prefix(run_id))}: no run {run_id} in this storage")
        raise PublishError(f"run {run_id} did not publish domain {domain} (no {storage.url(prefix + '/' + MANIFEST)}: "
                           "the domain failed, was unchanged since an earlier run, or is not finished)")
    manifest = storage.read_json(f"{prefix}/{MANIFEST}")
    wanted = [o for o in manifest["objects"] if o["key"].startswith("data/")]
    if not wanted:
        raise PublishError(f"run {run_id}, domain {domain}: no data/ objects in the manifest")
    return {obj["key"].removeprefix("data/"): _verified_bytes(storage, prefix, obj) for obj in wanted}
