"""Entry point for ``ray job submit --working-dir . -- python jobs/nightly.py [lorafleet run args]``.

Inside a Ray job the driver joins the job's cluster (``--address auto`` unless given)."""
import sys

from lorafleet.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    raise SystemExit(main(["run", *args]))
