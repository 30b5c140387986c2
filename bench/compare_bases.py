"""Two or more runs of the bundled domains on different bases, side by side (README's results table).

    python bench/compare_bases.py tiny=RUN_A/summary.json smollm2=RUN_B/summary.json,RUN_C/summary.json [more...]

Each run's summary.json (any storage path lorafleet published to); several runs under one label are one base's
domains run apart. Per domain and base: the test split's size, base
and tuned model with 95 % bootstrap intervals for json_valid, schema_pass and field accuracy, and grounding and chrF
where the domain has them; its trials' summed training time and its finishing time (merge, evaluations, export,
parity, report, publish). Prints a Markdown table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = [("json_valid_rate", "json_valid"), ("schema_pass_rate", "schema_pass"), ("field_accuracy", "field acc."),
           ("grounding", "grounding"), ("chrf", "chrF")]


def cell(metric: dict | None) -> str:
    if metric is None:
        return "—"
    value, ci = metric["value"], metric.get("ci")
    return f"{value:.2f}" if not ci else f"{value:.2f} ({ci[0]:.2f}–{ci[1]:.2f})"


def rows(label: str, summary: dict) -> list[list[str]]:
    out = []
    for name, domain in sorted(summary["domains"].items()):
        if domain["status"] != "published" and not domain.get("test"):
            error = (domain.get("error") or domain["status"]).splitlines()[0][:100]
            out.append([name, label, "—", *(["—"] * len(METRICS)), "—", "—", error])
            continue
        base, tuned = domain["test"]["base"], domain["test"]["tuned"]
        cells = [f"{cell(base['metrics'].get(key))} → {cell(tuned['metrics'].get(key))}"
                 if key in tuned["metrics"] else "—" for key, _ in METRICS]
        training = sum(t["metrics"].get("train_seconds", 0) + t["metrics"].get("load_seconds", 0)
                       for t in domain["trials"])
        finishing = sum((domain.get("timings") or {}).values())
        out.append([name, label, str(tuned["n"]), *cells, f"{training / 60:.1f}", f"{finishing / 60:.1f}",
                    domain["status"]])
    return out


def combined(summaries: list[dict]) -> dict:
    """One base's runs as one: a domain's latest published run wins."""
    domains: dict[str, dict] = {}
    for summary in summaries:
        for name, domain in summary["domains"].items():
            if name not in domains or domain["status"] == "published":
                domains[name] = domain
    return {"run_id": " + ".join(s["run_id"] for s in summaries), "domains": domains,
            "status": " + ".join(s["status"] for s in summaries), "seconds": sum(s["seconds"] for s in summaries)}


def main(argv: list[str]) -> None:
    if not argv or any("=" not in a for a in argv):
        raise SystemExit(__doc__)
    runs = {label: combined([json.loads(Path(p).read_text()) for p in paths.split(",")])
            for label, paths in (a.split("=", 1) for a in argv)}
    header = ["domain", "base", "test n", *(f"{title}: base → tuned" for _, title in METRICS),
              "trials, min (summed)", "finishing, min", "verdict"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    table = [row for label, summary in runs.items() for row in rows(label, summary)]
    for row in sorted(table, key=lambda r: (r[0], list(runs).index(r[1]))):
        print("| " + " | ".join(row) + " |")
    for label, summary in runs.items():
        print(f"\n{label}: run {summary['run_id']}, {summary['status']} in {summary['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main(sys.argv[1:])
