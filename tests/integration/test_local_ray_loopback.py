"""A local Ray that lorafleet starts (``lorafleet run`` without --address) listens on 127.0.0.1 only: every listening
socket of every Ray process (GCS, raylet, agents, dashboard, a worker) is a loopback one."""
import ipaddress
import os
import shutil
from pathlib import Path

import psutil
import pytest
import ray

from lorafleet.cluster import connect

pytestmark = pytest.mark.integration


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # "::ffff:127.0.0.1" too


def test_a_local_ray_started_by_lorafleet_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    temp_dir = Path("/tmp") / f"raylo{os.getpid()}"
    context = connect(None, num_cpus=1, include_dashboard=True, _temp_dir=str(temp_dir))
    try:
        assert ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()) == "127.0.0.1"  # a worker, too
        listening = [(process.name(), conn.laddr) for process in psutil.Process().children(recursive=True)
                     for conn in process.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
        names = {name for name, _ in listening}
        assert {"gcs_server", "raylet"} <= names and any("Dashboard" in n or n == "python" for n in names), listening
        assert all(_loopback(address.ip) for _, address in listening), listening
        dashboard_port = int(context.dashboard_url.rsplit(":", 1)[1])
        assert dashboard_port in {address.port for _, address in listening}
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
