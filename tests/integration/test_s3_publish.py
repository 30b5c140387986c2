"""Publishing against a real S3-compatible server (moto on 127.0.0.1) with real s3fs; faults injected
by wrapping the filesystem object, nothing mocked below s3fs."""
import errno
import hashlib
import itertools
import json
import math
import posixpath
import random
import threading
import time

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st
from s3fs.errors import translate_boto_error

from lorafleet import publish
from lorafleet.pipeline import promote_passed, resume_published
from lorafleet.publish import AlreadyPublished, PublishError, Storage
from lorafleet.results import DomainResult

pytestmark = pytest.mark.integration


class FailingFS:
    """Passes everything to the real s3fs object, except that uploads fail after ``ok_uploads`` of them."""

    def __init__(self, fs, ok_uploads: int):
        self._fs, self.ok_uploads = fs, ok_uploads

    def put_file(self, *args, **kwargs):
        if self.ok_uploads <= 0:
            raise OSError("injected upload failure")
        self.ok_uploads -= 1
        return self._fs.put_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fs, name)


class RaisingFS:
    """Passes everything to the real s3fs object, except that the first ``failures`` writes (``pipe_file``)
    raise ``error``."""

    def __init__(self, fs, error: OSError, failures: float = math.inf):
        self._fs, self.error, self.failures = fs, error, failures

    def pipe_file(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self._fs.pipe_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fs, name)


class SlowPointerFS:
    """Passes everything to the real filesystem object, except that a read of a ``latest.json`` returns its
    bytes only after ``delay`` seconds: the reader then decides on a pointer others may have moved meanwhile."""

    def __init__(self, fs, delay: float):
        self._fs, self.delay = fs, delay

    def cat_file(self, path, *args, **kwargs):
        data = self._fs.cat_file(path, *args, **kwargs)
        if path.endswith("/latest.json"):
            time.sleep(self.delay)
        return data

    def __getattr__(self, name):
        return getattr(self._fs, name)


def _s3fs_error(code: str, status: int, message: str) -> OSError:
    """The exception s3fs raises for a server answer without a ``Condition`` field (botocore's error as cause)."""
    return translate_boto_error(ClientError({"Error": {"Code": code, "Message": message},
                                             "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"))


def _domain_dir(tmp_path, run_id, n_files=5):
    out = tmp_path / f"art-{run_id}"
    for i in range(n_files):
        (out / "onnx").mkdir(parents=True, exist_ok=True)
        (out / "onnx" / f"part{i}.onnx_data").write_bytes(f"{run_id}:{i}:".encode() * 200)
    (out / publish.DOMAIN_SUMMARY).write_text(json.dumps(DomainResult(name="d", status="published").to_json()))
    return out


def _publish_and_promote(storage, run_id, domain, local):
    publish.publish_domain(storage, run_id, domain, local, extra={"status": "published"})
    publish.promote(storage, run_id, domain)


def test_upload_failing_after_k_objects_publishes_nothing_and_rerun_completes(s3_bucket, tmp_path):
    good = Storage(s3_bucket)
    _publish_and_promote(good, "r1", "legal", _domain_dir(tmp_path, "r1"))
    broken = Storage(s3_bucket, fs=FailingFS(good.fs, ok_uploads=3))
    with pytest.raises(OSError, match="injected"):
        publish.publish_domain(broken, "r2", "legal", _domain_dir(tmp_path, "r2"))
    assert not publish.is_published(good, "r2", "legal")
    assert good.read_json(publish.latest_key("legal"))["run_id"] == "r1"
    _publish_and_promote(good, "r2", "legal", _domain_dir(tmp_path, "r2"))  # the rerun
    assert good.read_json(publish.latest_key("legal"))["run_id"] == "r2"
    assert publish.verify(f"{s3_bucket}/runs/r2/legal") == []


def test_crash_between_manifest_and_pointer_is_finished_by_the_rerun(s3_bucket, tmp_path):
    storage = Storage(s3_bucket)
    _publish_and_promote(storage, "r1", "medical", _domain_dir(tmp_path, "r1"))
    publish.publish_domain(storage, "r2", "medical", _domain_dir(tmp_path, "r2"), extra={"status": "published"})
    # crash here: manifest written, pointer not moved; a reader still gets a complete r1
    pointer = storage.read_json(publish.latest_key("medical"))
    assert pointer["run_id"] == "r1" and storage.exists(pointer["manifest"])
    kept = resume_published(storage, "r2", ["medical"])
    assert kept["medical"].status == "published" and kept["medical"].resumed
    promote_passed(storage, "r2", kept)
    assert storage.read_json(publish.latest_key("medical"))["run_id"] == "r2"
    assert resume_published(storage, "r3", ["medical"]) == {}


def test_same_run_id_twice_publishes_exactly_once(s3_bucket, tmp_path):
    storage = Storage(s3_bucket)
    local = _domain_dir(tmp_path, "r1")
    errors, barrier = [], threading.Barrier(2)

    def racer():
        fs = Storage(s3_bucket)
        barrier.wait()
        try:
            publish.publish_domain(fs, "r1", "contracts", local)
        except AlreadyPublished as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and "run r1, domain contracts" in errors[0]
    assert storage.exists("runs/r1/contracts/manifest.json")
    with pytest.raises(AlreadyPublished, match="run r1, domain contracts: already published"):
        publish.publish_domain(storage, "r1", "contracts", local)


def test_exclusive_create_is_enforced_by_the_server(s3_bucket):
    storage = Storage(s3_bucket)
    storage.create_exclusive("x/once.json", b"1")
    with pytest.raises(FileExistsError):
        storage.create_exclusive("x/once.json", b"2")
    assert storage.read_bytes("x/once.json") == b"1"


@pytest.mark.parametrize("error", [
    OSError(errno.EIO, "upload of runs/20261122-041230/legal/manifest.json failed: connection reset"),
    OSError("request 7F412C0D: read timeout"),
    _s3fs_error("InternalError", 500, "We encountered an internal error (request id 412A9E). Please try again."),
], ids=["run-id", "request-id", "server-error"])
def test_412_in_the_text_is_not_exists(s3_bucket, error):
    storage = Storage(s3_bucket, fs=RaisingFS(Storage(s3_bucket).fs, error))
    with pytest.raises(OSError) as caught:
        storage.create_exclusive("x/once.json", b"1")
    assert caught.value is error


def test_412_without_its_condition_still_means_exists(s3_bucket):
    error = _s3fs_error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold")
    storage = Storage(s3_bucket, fs=RaisingFS(Storage(s3_bucket).fs, error))
    with pytest.raises(FileExistsError) as caught:
        storage.create_exclusive("x/once.json", b"1")
    assert caught.value.__cause__ is error


def test_reader_never_sees_a_missing_or_wrong_object_while_publishes_fail(s3_bucket, tmp_path):
    storage = Storage(s3_bucket)
    _publish_and_promote(storage, "r00", "finance", _domain_dir(tmp_path, "r00", 3))
    done, seen, problems = threading.Event(), set(), []

    def reader():
        rs = Storage(s3_bucket)
        for _ in range(2000):  # bounded
            if done.is_set():
                break
            pointer = rs.read_json(publish.latest_key("finance"))
            manifest = rs.read_json(pointer["manifest"])
            seen.add(pointer["run_id"])
            prefix = posixpath.dirname(pointer["manifest"])
            for obj in manifest["objects"]:
                try:
                    data = rs.read_bytes(f"{prefix}/{obj['key']}")
                except FileNotFoundError:
                    problems.append(f"missing {obj['key']}")
                    continue
                if hashlib.sha256(data).hexdigest() != obj["sha256"]:
                    problems.append(f"mismatch {obj['key']}")

    thread = threading.Thread(target=reader)
    thread.start()
    rng = random.Random(3)
    try:
        for i in range(1, 9):
            run_id = f"r{i:02d}"
            local = _domain_dir(tmp_path, run_id, 3)
            flaky = Storage(s3_bucket, fs=FailingFS(storage.fs, ok_uploads=rng.choice([0, 1, 2, 99])))
            try:
                _publish_and_promote(flaky, run_id, "finance", local)
            except OSError:
                _publish_and_promote(storage, run_id, "finance", local)  # the rerun
    finally:
        done.set()
        thread.join(timeout=120)
    assert problems == []
    assert len(seen) >= 2  # the reader really followed the pointer as it moved
    assert storage.read_json(publish.latest_key("finance"))["run_id"] == "r08"


@settings(max_examples=300, deadline=None)
@given(domain=st.one_of(st.text(max_size=80), st.sampled_from(["..", ".", "/", "", "a/../b", "a\x00", "x" * 63,
                                                                "x" * 64, "ok-name", "a_b"])),
       run_id=st.sampled_from(["r1", "20261122-051000", "../r", "r/1"]))
def test_domain_names_cannot_escape_their_prefix(domain, run_id):
    try:
        prefix = publish.domain_prefix(run_id, domain)
    except PublishError:
        return
    key = posixpath.normpath(f"{prefix}/manifest.json")
    assert key.startswith(f"runs/{run_id}/{domain}/") and "\x00" not in key
    assert posixpath.normpath(prefix) == prefix and prefix.count("/") == 2


def test_verify_reports_tampering_and_missing_objects(s3_bucket, tmp_path):
    storage = Storage(s3_bucket)
    publish.publish_domain(storage, "r1", "legal", _domain_dir(tmp_path, "r1"))
    assert publish.verify(f"{s3_bucket}/runs/r1") == []
    storage.write_bytes("runs/r1/legal/onnx/part1.onnx_data", b"tampered")
    storage.fs.rm(storage.path("runs/r1/legal/onnx/part2.onnx_data"))
    problems = publish.verify(f"{s3_bucket}/runs/r1/legal")
    assert any("part1.onnx_data: 8 bytes" in p for p in problems) and any("part2.onnx_data: missing" in p for p in problems)


@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_failed_fetch_leaves_nothing_behind(s3_bucket, tmp_path, damage):
    storage = Storage(s3_bucket)
    _publish_and_promote(storage, "r1", "legal", _domain_dir(tmp_path, "r1"))
    consumer = tmp_path / "consumer"
    fetched = publish.fetch(s3_bucket, "legal", consumer / "ok")
    assert sorted(p.name for p in fetched.iterdir()) == ["lorafleet_source.json"] + [f"part{i}.onnx_data" for i in range(5)]
    if damage == "tampered":
        storage.write_bytes("runs/r1/legal/onnx/part3.onnx_data", b"tampered")
        expected, match = publish.VerifyError, "part3.onnx_data: sha256 differs from the manifest"
    else:
        storage.fs.rm(storage.path("runs/r1/legal/onnx/part3.onnx_data"))
        expected, match = FileNotFoundError, None
    with pytest.raises(expected, match=match):
        publish.fetch(s3_bucket, "legal", consumer / "legal")
    assert sorted(p.name for p in consumer.iterdir()) == ["ok"]  # no legal/, no .legal-* staging folder


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_promoters_leave_the_newest_run_latest(where, tmp_path, request, monkeypatch):
    root = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path / "store")
    storage = Storage(root)
    pointer_key = publish.latest_key("legal")
    # r2 and r3 were published in the same second (the run id decides between them); r0 is what a round starts at
    published_at = {"r0": "2026-11-22T04:12:28+00:00", "r1": "2026-11-22T04:12:29+00:00",
                    "r2": "2026-11-22T04:12:30+00:00", "r3": "2026-11-22T04:12:30+00:00"}
    for run_id, stamp in published_at.items():
        monkeypatch.setattr(publish, "_now", lambda stamp=stamp: stamp)
        publish.publish_domain(storage, run_id, "legal", _domain_dir(tmp_path, run_id, 1))
    monkeypatch.undo()
    start_pointer = {"domain": "legal", "run_id": "r0", "manifest": "runs/r0/legal/manifest.json",
                     "published_at": published_at["r0"], "promoted_at": published_at["r0"]}

    def promoter(barrier, moved, run_id, delay):
        racer = Storage(root, fs=SlowPointerFS(Storage(root).fs, delay))
        barrier.wait()
        moved[run_id] = publish.promote(racer, run_id, "legal")

    for round_no, delays in enumerate(itertools.permutations([0.0, 0.15, 0.3])):
        if round_no % 2:
            storage.write_json(pointer_key, start_pointer)
        elif storage.exists(pointer_key):
            storage.fs.rm(storage.path(pointer_key))
        barrier, moved = threading.Barrier(len(delays)), {}
        threads = [threading.Thread(target=promoter, args=(barrier, moved, run_id, delay))
                   for run_id, delay in zip(["r1", "r2", "r3"], delays)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert storage.read_json(pointer_key)["run_id"] == "r3", f"round {round_no}, delays {delays}"
        assert moved["r3"] is True


def test_promote_retries_after_a_conditional_write_conflict(s3_bucket, tmp_path):
    storage = Storage(s3_bucket)
    _publish_and_promote(storage, "r1", "legal", _domain_dir(tmp_path, "r1", 1))
    for run_id in ("r2", "r3"):
        publish.publish_domain(storage, run_id, "legal", _domain_dir(tmp_path, run_id, 1))
    conflict = _s3fs_error("ConditionalRequestConflict", 409,
                           "A conflicting conditional operation is currently in progress against this resource.")
    assert publish.promote(Storage(s3_bucket, fs=RaisingFS(storage.fs, conflict, failures=1)), "r2", "legal")
    assert storage.read_json(publish.latest_key("legal"))["run_id"] == "r2"
    with pytest.raises(PublishError, match="latest.json kept moving; gave up after 10 attempts"):
        publish.promote(Storage(s3_bucket, fs=RaisingFS(storage.fs, conflict)), "r3", "legal")
    assert storage.read_json(publish.latest_key("legal"))["run_id"] == "r2"


def test_runs_appending_to_a_history_at_once_lose_nothing_on_s3(s3_bucket):
    """history.json is replaced only if its ETag is unchanged, so every run's entry survives a race."""
    def appender(barrier, i):
        barrier.wait()
        entry = {"run_id": f"run-{i}", "date": f"2026-11-2{i}T02:00:00+00:00"}
        publish.record_history(Storage(s3_bucket), "legal", entry, lambda runs: f"{len(runs)} runs")

    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=appender, args=(barrier, i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storage = Storage(s3_bucket)
    assert [e["run_id"] for e in publish.read_history(storage, "legal")] == ["run-0", "run-1", "run-2", "run-3"]
    assert storage.read_bytes(publish.history_key("legal", "history.html")) == b"4 runs"
