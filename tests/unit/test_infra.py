from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_manifests_parse_and_submit_the_nightly_job():
    docs = {p.name: yaml.safe_load(p.read_text()) for p in INFRA.glob("*.yaml")}
    assert docs["raycluster.yaml"]["kind"] == "RayCluster"
    assert docs["raycluster.yaml"]["spec"]["rayVersion"] == "2.60.0"
    cron = docs["nightly-cronjob.yaml"]
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["ray", "job", "submit"] and "jobs/nightly.py" in command
    profile = command[command.index("--profile") + 1]
    assert (INFRA.parent / profile).is_file()


def test_a_failed_trial_is_reported_by_its_own_error_not_by_rays_coloured_traceback():
    from ray.exceptions import RayTaskError

    from lorafleet.sweep import error_text

    wrapped = RayTaskError("train", "\x1b[36mray::ImplicitFunc.train()\x1b[39m\nTraceback ...\nValueError: boom",
                           ValueError("boom"))
    assert error_text(wrapped) == "ValueError: boom"
    assert error_text(RuntimeError("\x1b[31mCUDA\x1b[0m out of memory")) == "RuntimeError: CUDA out of memory"
