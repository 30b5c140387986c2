"""A worker node lost in the middle of the sweep: a real multi-node Ray cluster (one raylet per node, each with its
own resources), storage on the moto S3 server only (no shared disk); the node running a trial is removed once Tune
recorded a checkpoint of that trial. Its trial goes on from that checkpoint on the other node and the run ends
succeeded."""
import psutil
import pytest
from ray.tune import Callback

from lorafleet import publish
from lorafleet.config import find_domain_files, parse_overrides
from lorafleet.pipeline import RunOptions, run
from tests.conftest import OPEN_GATE

pytestmark = pytest.mark.integration


def _node_of(pid: int, cluster):
    """The cluster node whose raylet started the worker process ``pid``."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    for ancestor in psutil.Process(pid).parents():
        if ancestor.pid in raylets:
            return raylets[ancestor.pid]
    return None


class RemoveNode(Callback):
    """A Tune callback (in the driver) removing the worker node of the first trial Tune recorded a checkpoint of at
    or past ``at_step``."""

    def __init__(self, cluster, at_step: int):
        self.cluster, self.at_step, self.removed = cluster, at_step, []

    def __getstate__(self):  # Tune pickles its callbacks into the experiment folder; the cluster stays here
        return {"at_step": self.at_step, "removed": self.removed}

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        step = trial.last_result.get("checkpoint_step", 0)
        node = _node_of(trial.last_result["pid"], self.cluster)
        if not self.removed and step >= self.at_step and node is not None:
            self.removed.append((trial.trial_id, step))
            self.cluster.remove_node(node, allow_graceful=False)


def test_a_lost_node_s_trials_go_on_from_their_checkpoints_elsewhere(s3_bucket, small_base, domain_copy, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    # the head runs the driver only; two worker nodes of 2 CPUs, one trial (2 CPUs) on each
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": "lorafleet.console.setup_worker"})
    try:
        domain_copy("medical")
        sets = [f"base_model={small_base}", "train.max_steps=12", "train.eval_steps=6", "train.checkpoint_steps=3",
                "sweep.space.lora_rank=[4,8]", "sweep.resources_per_trial.cpu=2",
                "eval.max_examples=2", "eval.max_new_tokens=8", "export.onnx=false", *OPEN_GATE]
        remover = RemoveNode(cluster, at_step=6)
        summary = run(RunOptions(config_files=find_domain_files(str(tmp_path), ["medical"]),
                                 overrides=parse_overrides(sets), storage=s3_bucket, run_id="nodelost",
                                 work_dir=tmp_path / "work", tune_callbacks=(remover,)))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert remover.removed, "no node was removed"
    lost_trial, lost_at = remover.removed[0]
    assert summary.status == "succeeded", summary.domains["medical"].error
    trials = summary.domains["medical"].trials
    assert all(t.finished for t in trials)
    restarted = [t for t in trials if t.restarts]
    assert len(restarted) == 1 and restarted[0].resumed_from == [lost_at], [(t.restarts, t.resumed_from) for t in trials]
    assert publish.Storage(s3_bucket).read_json(publish.latest_key("medical"))["run_id"] == "nodelost"
