"""Shared fixtures. Caches that libraries write under $HOME/$TMPDIR are pointed into pytest's temp dirs."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOMAINS_DIR = REPO / "configs" / "domains"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_caches(tmp_path_factory):
    """Keep the test run off the user's caches (the tiny base model is built once per session)."""
    root = tmp_path_factory.mktemp("caches")
    saved = {k: os.environ.get(k) for k in ("LORAFLEET_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    os.environ.setdefault("LORAFLEET_CACHE", str(root / "lorafleet"))
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def small_base(tmp_path_factory) -> Path:
    """A very small pretrained-from-nothing base (seconds to build), for tests that train."""
    from lorafleet.base_model import DEFAULT_CORPUS, TinySpec, ensure_tiny_base

    spec = TinySpec(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, pretrain_epochs=1, pretrain_batch_size=32)
    return ensure_tiny_base(spec, DEFAULT_CORPUS, tmp_path_factory.mktemp("small-base"))


@pytest.fixture
def local_ray():
    """A private local Ray (2 CPUs, short temp dir for its sockets) with lorafleet's logging in every worker;
    yields its temp dir, where its logs are."""
    import ray

    temp_dir = Path("/tmp") / f"raytest{os.getpid()}"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp_dir),
             runtime_env={"worker_process_setup_hook": "lorafleet.console.setup_worker"})
    yield temp_dir
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def domain_copy(tmp_path):
    """Copy a bundled domain (YAML + its folder) into tmp_path so a test may change it."""

    def copy(name: str) -> Path:
        shutil.copy(DOMAINS_DIR / f"{name}.yaml", tmp_path / f"{name}.yaml")
        shutil.copytree(DOMAINS_DIR / name, tmp_path / name, dirs_exist_ok=True)
        return tmp_path / f"{name}.yaml"

    return copy


# `--set` overrides that let any trained model through the bundled gate (tests about publishing, not quality)
OPEN_GATE = ["gate.min.schema_pass_rate=0", "gate.min.json_valid_rate=0", "gate.not_below_base=[]",
             "gate.min_improvement.score=-100", "gate.max_field_regression=1", "gate.golden_min.schema_pass_rate=0",
             "gate.variants.int4.max_drop.schema_pass_rate=1", "gate.variants.int4.max_drop.score=100"]

CANARY_SECRET = "canary-secret-7f3a9c1e"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible HTTP server (moto) on 127.0.0.1; credentials only through the environment.
    The secret key is a canary: tests check that it shows up in no artifact, report, summary or log."""
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "lorafleet-test", "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket; returns its s3:// URI with a prefix."""
    import s3fs

    name = "b-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}/lorafleet"


WEBHOOK_CANARY = "canary-webhook-3b9d71"  # in the webhook URL's path: tests check it shows up in no log


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads, block_on_close = True, False  # a handler still sleeping (a timeout test) does not hold shutdown
    status, delay = 200, 0.0
    received: list

    def handle_error(self, request, client_address):  # a client that gave up waiting (the timeout test)
        pass


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        time.sleep(self.server.delay)
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def webhook():
    """A Slack-like webhook on 127.0.0.1, in a thread: ``.url`` (its path holds WEBHOOK_CANARY), ``.received`` (the
    JSON bodies posted), ``.status`` to answer with and ``.delay`` before answering."""
    server = _WebhookServer(("127.0.0.1", 0), _Webhook)
    server.received = []
    server.url = f"http://127.0.0.1:{server.server_port}/services/T0LORA/B0FLEET/{WEBHOOK_CANARY}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def rewrite_yaml(path: Path, edit) -> Path:
    """A domain YAML edited in place: ``edit(raw)`` changes the parsed mapping, which is written back."""
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw))
    return path
