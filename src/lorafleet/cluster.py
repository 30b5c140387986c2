"""Ray plumbing in one place: run a function as one Ray task per name with its resources, wait for all,
and hand back each result or the error that ended its task (unwrapped from Ray's task error)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorafleet.config import Resources


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


def run_tasks(fn: Callable[..., Any], calls: dict[str, Call]) -> dict[str, Any]:
    """``fn(*call.args)`` for every call, each a Ray task with its resources, side by side; returns name ->
    result, or a TaskFailure for a task that raised (one task's failure does not stop the others)."""
    import ray

    remote = ray.remote(fn)
    pending = {remote.options(num_cpus=c.resources.cpu, num_gpus=c.resources.gpu, max_retries=0).remote(*c.args): name
               for name, c in calls.items()}
    results: dict[str, Any] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        try:
            results[name] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - reported per task, the others go on
            cause = getattr(exc, "cause", None) or exc
            results[name] = TaskFailure(f"{type(cause).__name__}: {cause}")
    return results
