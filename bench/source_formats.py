"""Reading one large dataset in each source format: time and memory, streamed (``sources.read``) beside reading
the file whole.

    python bench/source_formats.py [--records 200000] [--dir /tmp/lorafleet-sources] [--json OUT]

Writes the bundled contracts records, repeated up to --records with fresh group ids and a reference number in
each question, as JSONL, 8 JSONL shards, a
JSON array, Parquet (row groups of 10,000) and CSV (input/output columns). Each reading runs in a fresh process that
only counts the records: its seconds, records per second, and peak memory above the process after imports (VmHWM, reset after
imports).
The whole-file readings (``json.load`` of the array, ``pyarrow.parquet.read_table().to_pylist()``, every JSONL line
into a list) hold every record at once, as a reader that is not streamed does. The last row is ``data.load_examples``
on the JSONL, which keeps every example (the list the split is made from). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READINGS = {  # name -> (file, how)
    "jsonl, streamed": ("data.jsonl", "stream"),
    "8 jsonl shards (glob), streamed": ("shards/part-*.jsonl", "stream"),
    "json array, streamed (1 MiB chunks)": ("data.json", "stream"),
    "parquet, streamed (Arrow batches)": ("data.parquet", "stream"),
    "csv (input/output columns), streamed": ("data.csv", "stream"),
    "jsonl, every line into a list": ("data.jsonl", "jsonl_whole"),
    "json array, json.load": ("data.json", "json_whole"),
    "parquet, read_table().to_pylist()": ("data.parquet", "parquet_whole"),
    "jsonl, data.load_examples (examples kept)": ("data.jsonl", "examples"),
}
COLUMNS = {"contract_id": "group", "input": "question", "output": "answer"}


def write_data(folder: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = (REPO / "configs/domains/contracts/data.jsonl").read_text(encoding="utf-8").splitlines()
    base = [json.loads(line) for line in lines]
    records = []
    for i in range(n):
        record = json.loads(json.dumps(base[i % len(base)]))
        record["contract_id"] = f"{record['contract_id']}-{i // len(base)}"
        record["messages"][0]["content"] += f" (Ref. {i}.)"  # every record its own: no dictionary encoding
        records.append(record)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shards").mkdir(exist_ok=True)
    with open(folder / "data.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    for k in range(8):
        with open(folder / "shards" / f"part-{k}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records[k::8])
    with open(folder / "data.json", "w", encoding="utf-8") as handle:
        json.dump(records, handle, ensure_ascii=False, indent=1)
    pq.write_table(pa.Table.from_pylist(records), folder / "data.parquet", row_group_size=10_000)
    with open(folder / "data.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "question", "answer"])
        writer.writerows([r["contract_id"], r["messages"][0]["content"], r["messages"][1]["content"]]
                         for r in records)


def worker(folder: str, rel: str, how: str) -> None:
    import pyarrow.parquet as pq  # every import before the baseline

    from lorafleet import sources
    from lorafleet.config import load_domain
    from lorafleet.data import load_examples

    path = f"{folder}/{rel}"
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    if how == "stream":
        columns = COLUMNS if rel.endswith(".csv") else None
        n = sum(1 for _ in sources.read(path, "auto", columns, "messages"))
    elif how == "jsonl_whole":
        with open(path, encoding="utf-8") as handle:
            n = len([json.loads(line) for line in handle])
    elif how == "json_whole":
        with open(path, encoding="utf-8") as handle:
            n = len(json.load(handle))
    elif how == "parquet_whole":
        n = len(pq.read_table(path).to_pylist())
    else:
        cfg = load_domain(REPO / "configs/domains/contracts.yaml", {"data": {"path": path}})
        n = len(load_examples(cfg)[0])
    seconds = time.perf_counter() - start
    print(json.dumps({"records": n, "seconds": seconds, "peak_mib": (_status_kib("VmHWM") - baseline) / 1024}))


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc (kB). Not ru_maxrss: that one keeps the parent's peak across
    fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--dir", default="/tmp/lorafleet-sources")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    folder = Path(args.dir)
    write_data(folder, args.records)
    sizes = {rel: sum(p.stat().st_size for p in folder.glob(rel)) for rel, _ in READINGS.values()}
    results = {}
    for name, (rel, how) in READINGS.items():
        out = subprocess.run([sys.executable, __file__, "--worker", str(folder), rel, how], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        results[name] = {**json.loads(out.stdout.splitlines()[-1]), "file_mib": sizes[rel] / 2**20}
    print(f"{args.records} records (contracts, repeated, each with its own reference number)\n")
    print("| reading | file MiB | records | seconds | records/s | peak MiB above imports |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['file_mib']:.0f} | {r['records']} | {r['seconds']:.1f} | "
              f"{r['records'] / r['seconds']:,.0f} | {r['peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
