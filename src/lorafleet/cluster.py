"""Ray plumbing in one place: submit a function as a Ray task with its resources now, collect every task's
result later, each as the task returned it or as the error that ended it (unwrapped from Ray's task error)."""
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


class TaskGroup:
    """Named Ray tasks, each submitted when its input is ready and running as soon as its resources are free;
    ``results`` waits for them all."""

    def __init__(self) -> None:
        self._pending: dict[Any, str] = {}  # the task's ObjectRef -> its name

    def submit(self, name: str, fn: Callable[..., Any], call: Call) -> None:
        """``fn(*call.args)`` as a Ray task with the call's resources; returns at once."""
        import ray

        task = ray.remote(fn).options(num_cpus=call.resources.cpu, num_gpus=call.resources.gpu, max_retries=0)
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
