"""Ray plumbing in one place: connect to Ray (a local one listening on 127.0.0.1 only), submit a function as a Ray
task with its resources now, collect every task's result later, each as the task returned it or as the error that
ended it (unwrapped from Ray's task error)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lorafleet.config import Resources

LOOPBACK = "127.0.0.1"


def connect(address: str | None, **options: Any):
    """``ray.init`` (its context returned): join the cluster at ``address`` (``auto``: the one on this machine), or
    RAY_ADDRESS's, or without either start a single-machine Ray whose servers (GCS, raylet, agents, workers, the
    dashboard if enabled) listen on 127.0.0.1 only, not on every interface of the machine."""
    import ray

    if address is not None or os.environ.get("RAY_ADDRESS"):
        return ray.init(address=address, **options)
    with _loopback_node():
        return ray.init(dashboard_host=LOOPBACK, **options)


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray 2.60 gives a new local node the address of the interface that routes outwards, and its servers then
    listen on all interfaces (measured: GCS, raylet and workers on "::"); ray.init(_node_ip_address="127.0.0.1")
    is turned back into that address (``services.resolve_ip_for_localhost``). Ray's single-machine mode, which it
    uses on macOS and Windows (``ray_constants.ENABLE_RAY_CLUSTER``, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    when Ray is imported), makes the node 127.0.0.1, and every server binds it. Set while the node starts only:
    the started node keeps its address, and a later ray.init in the process is Ray's own again."""
    from ray._private import ray_constants

    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised: the original exception's type and message (Ray wraps it in a RayTaskError)."""

    error: str

    def __str__(self) -> str:
        return self.error


@dataclass(frozen=True)
class Call:
    args: tuple
    resources: Resources


class TaskGroup:
    """Named Ray tasks, each submitted when its input is ready and running as soon as its resources are free;
    ``results`` waits for them all."""

    def __init__(self) -> None:
        self._pending: dict[Any, str] = {}  # the task's ObjectRef -> its name

    def submit(self, name: str, fn: Callable[..., Any], call: Call) -> None:
        """``fn(*call.args)`` as a Ray task with the call's resources; returns at once."""
        import ray

        # A task holding a GPU gets a process of its own (max_calls=1): Ray gives GPU tasks that default only when
        # num_gpus is in @ray.remote, not in .options, and a reused process would pass on what the last task left
        # (the memory probe's Unsloth, whose patches break plain transformers' generate, and its CUDA memory)
        task = ray.remote(num_cpus=call.resources.cpu, num_gpus=call.resources.gpu, max_retries=0,
                          max_calls=1 if call.resources.gpu else 0)(fn)
        self._pending[task.remote(*call.args)] = name

    def results(self) -> dict[str, Any]:
        """name -> result, or a TaskFailure for a task that raised (one task's failure does not stop the others),
        in the order the tasks ended."""
        import ray

        results: dict[str, Any] = {}
        while self._pending:
            done, _ = ray.wait(list(self._pending), num_returns=1)
            name = self._pending.pop(done[0])
            try:
                results[name] = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - reported per task, the others go on
                cause = getattr(exc, "cause", None) or exc
                results[name] = TaskFailure(f"{type(cause).__name__}: {cause}")
        return results
