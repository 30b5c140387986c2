"""A Ray task that holds a GPU runs in a process of its own, so nothing one GPU task imports or allocates reaches
the next (the memory probe imports Unsloth, whose patches break plain transformers' generate in a finishing task
that reused its process). Ray is told of one GPU it does not check for, so this runs on the CPU machine."""
import os
import sys

import pytest

from lorafleet.cluster import Call, TaskGroup
from lorafleet.config import Resources

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_with_a_gpu(tmp_path_factory):
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray", numbered=True)))
    yield
    ray.shutdown()


def import_marker_and_report() -> tuple[int, bool]:
    """This process's id, and whether an earlier task in it left its import behind."""
    left_behind = "json.tool" in sys.modules
    import json.tool  # noqa: F401 - stands for a library that patches others when imported (Unsloth)
    return os.getpid(), left_behind


def run_in_turn(resources: Resources) -> list[tuple[int, bool]]:
    seen = []
    for n in range(3):  # one after another, so that a free process would be reused
        tasks = TaskGroup()
        tasks.submit(f"task{n}", import_marker_and_report, Call((), resources))
        outcome = tasks.results()[f"task{n}"]
        assert isinstance(outcome, tuple), outcome
        seen.append(outcome)
    return seen


def test_gpu_tasks_never_share_a_process(ray_with_a_gpu):
    seen = run_in_turn(Resources(cpu=1, gpu=0.2))
    assert len({pid for pid, _ in seen}) == 3
    assert not any(left for _, left in seen)


def test_cpu_tasks_reuse_their_process(ray_with_a_gpu):
    # the other side of the rule: a CPU task keeps its imports for the next (finishing on CPUs saves them)
    seen = run_in_turn(Resources(cpu=1, gpu=0))
    assert len({pid for pid, _ in seen}) < 3
    assert any(left for _, left in seen)
