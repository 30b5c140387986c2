import re
import shlex
import tomllib
from pathlib import Path

import yaml

from lorafleet.cli import build_parser
from lorafleet.config import find_domain_files, load_domain, load_overrides_file, merge_overrides, parse_overrides

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
IMAGE = "registry.example.internal/lorafleet:latest"
RAY_VERSION = next(re.search(r"==([\w.]+)", d).group(1) for d in tomllib.loads(
    (REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"] if d.startswith("ray["))
TOKEN_AUTH = {"mode": "token", "secretName": "lorafleet-ray-auth"}
SECRET_NAMES = re.compile(r"AWS_|TOKEN|WEBHOOK|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def _manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(INFRA.glob("*.yaml"))}


def _one(name: str, kind: str) -> dict:
    [doc] = [d for d in _manifests()[name] if d["kind"] == kind]
    return doc


def _containers(node):
    """Every container spec anywhere in a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _ray_pods(cluster_spec: dict) -> dict[str, dict]:
    pods = {"head": cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]}
    pods |= {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster_spec["workerGroupSpecs"]}
    return pods


def test_the_ray_cluster_and_the_nightly_rayjob_run_the_pinned_ray_with_token_auth():
    cluster = _one("raycluster.yaml", "RayCluster")
    job = _one("nightly-rayjob.yaml", "RayJob")
    assert job["apiVersion"] == cluster["apiVersion"] == "ray.io/v1" and RAY_VERSION == "2.60.0"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == RAY_VERSION and spec["authOptions"] == TOKEN_AUTH
        pods = _ray_pods(spec)
        assert {c["image"] for c in pods.values()} == {IMAGE} and {c["workingDir"] for c in pods.values()} == {"/app"}
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
        assert pods["gpu"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["backoffLimit"] == 0 and 0 < job["spec"]["activeDeadlineSeconds"] < 24 * 3600  # before next night


def test_the_rayjob_entrypoint_is_a_lorafleet_run_that_parses_and_loads_every_domain():
    job = _one("nightly-rayjob.yaml", "RayJob")
    program, script, *flags = shlex.split(job["spec"]["entrypoint"])
    assert (program, script) == ("python", "jobs/nightly.py") and (REPO / script).is_file()
    args = build_parser().parse_args(["run", *flags])
    assert args.storage.startswith("s3://") and (REPO / args.profile).is_file()
    overrides = merge_overrides(load_overrides_file(REPO / args.profile), parse_overrides(args.overrides))
    configs = [load_domain(f, overrides) for f in find_domain_files(REPO / args.config_dir)]
    [webhook_env] = {cfg.notify.webhook_env for cfg in configs}
    head_env = {e["name"]: e for e in _ray_pods(job["spec"]["rayClusterSpec"])["head"]["env"]}
    assert head_env[webhook_env]["valueFrom"]["secretKeyRef"]["name"] == "lorafleet-notify"  # the driver has it


def test_the_cronjob_creates_the_rayjob_every_night_with_no_more_rights_than_that():
    docs = {d["kind"]: d for d in _manifests()["nightly-cronjob.yaml"]}
    cron = docs["CronJob"]
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = pod["containers"][0]["command"][-1]
    job_name = _one("nightly-rayjob.yaml", "RayJob")["metadata"]["name"]
    assert f"kubectl get rayjob {job_name} " in script and f"kubectl delete rayjob {job_name} " in script
    [mount] = pod["containers"][0]["volumeMounts"]
    assert f"kubectl create -f {mount['mountPath']}/nightly-rayjob.yaml" in script
    [volume] = pod["volumes"]
    assert volume["name"] == mount["name"] and volume["configMap"]["name"] == "lorafleet-nightly-rayjob"
    assert "--from-file=infra/nightly-rayjob.yaml" in (INFRA / "nightly-cronjob.yaml").read_text()
    assert docs["ServiceAccount"]["metadata"]["name"] == pod["serviceAccountName"]
    assert docs["Role"]["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["get", "create", "delete"]}]
    binding = docs["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]


def test_no_credential_is_written_in_any_manifest():
    for name, docs in _manifests().items():
        for container in _containers(docs):
            for env in container.get("env", []):
                if SECRET_NAMES.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (name, env)
            assert all("secretRef" in source for source in container.get("envFrom", [])), (name, container)
        text = (INFRA / name).read_text()
        assert not re.search(r"AKIA[0-9A-Z]{12}|hooks\.slack\.com/services/T|auth_token:\s*\S", text), name
        assert "runtimeEnvYAML" not in text  # Ray logs runtime envs in plain text


def test_a_failed_trial_is_reported_by_its_own_error_not_by_rays_coloured_traceback():
    from ray.exceptions import RayTaskError

    from lorafleet.sweep import error_text

    wrapped = RayTaskError("train", "\x1b[36mray::ImplicitFunc.train()\x1b[39m\nTraceback ...\nValueError: boom",
                           ValueError("boom"))
    assert error_text(wrapped) == "ValueError: boom"
    assert error_text(RuntimeError("\x1b[31mCUDA\x1b[0m out of memory")) == "RuntimeError: CUDA out of memory"
