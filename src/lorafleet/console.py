"""What a person sees on the terminal, and where everything else goes.

The terminal gets the run's stage lines (the ``lorafleet.progress`` logger: a line per trial start and end,
a line per domain stage) and lorafleet's warnings and errors. Everything else — the libraries' logs, Ray
Tune's status tables, tokenizing progress bars, per-step lines, warnings of torch and transformers — goes to
log files in the run's work folder: ``driver.log`` for the driver, ``worker-<pid>.log`` for each Ray worker
(on the node that ran it). ``--verbose`` sends it all to the terminal, as before.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

progress = logging.getLogger("lorafleet.progress")

LOG_DIR_VAR = "LORAFLEET_LOG_DIR"
VERBOSE_VAR = "LORAFLEET_VERBOSE"
# libraries that chatter at INFO or WARNING even when all is well (tracing, export); errors still show
CHATTY = ("torch.onnx", "optimum", "transformers")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_driver_log: Path | None = None  # where the driver's library output goes when not verbose


class _ForAPerson(logging.Filter):
    """Stage lines, and lorafleet's own warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == progress.name or (record.name.startswith("lorafleet") and record.levelno >= logging.WARNING)


def _ours(handler: logging.Handler) -> logging.Handler:
    handler.lorafleet = True
    return handler


def _console_handler(stream, verbose: bool) -> logging.Handler:
    handler = _ours(logging.StreamHandler(stream))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s" if not verbose else FILE_FORMAT, "%H:%M:%S"))
    if not verbose:
        handler.addFilter(_ForAPerson())
    return handler


def _reset_root(level: int) -> logging.Logger:
    """The root logger at ``level`` without the handlers an earlier setup added (others', e.g. pytest's, stay)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "lorafleet", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.getLogger("lorafleet").setLevel(level)
    return root


def setup_driver(log_dir: Path | None = None, verbose: bool = False) -> None:
    """The CLI's logging: the terminal as above, and with ``log_dir`` everything into ``log_dir/driver.log``."""
    global _driver_log
    root = _reset_root(logging.getLevelName(os.environ.get("LORAFLEET_LOG", "INFO")))
    root.addHandler(_console_handler(sys.stderr, verbose))
    _driver_log = None if verbose or log_dir is None else log_dir / "driver.log"
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file = _ours(logging.FileHandler(log_dir / "driver.log", encoding="utf-8"))
        file.setFormatter(logging.Formatter(FILE_FORMAT, "%H:%M:%S"))
        root.addHandler(file)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR if verbose else logging.WARNING)


@contextlib.contextmanager
def library_prints_to_log():
    """What libraries ``print`` in the driver meanwhile (Ray Tune's experiment banner and status tables) goes to
    driver.log instead of the terminal, unless verbose."""
    if _driver_log is None:
        yield
        return
    with open(_driver_log, "a", encoding="utf-8") as log_file, contextlib.redirect_stdout(log_file):
        yield


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: in each worker, the process's own stdout and stderr (what
    libraries print, at the file-descriptor level) go to ``worker-<pid>.log`` in LORAFLEET_LOG_DIR, and
    the terminal lines go to the stream Ray forwards to the driver. Without a log dir, or verbose, all of it
    goes to the driver as Ray forwards it."""
    log_dir, verbose = os.environ.get(LOG_DIR_VAR), os.environ.get(VERBOSE_VAR) == "1"
    root = _reset_root(logging.getLevelName(os.environ.get("LORAFLEET_LOG", "INFO")))
    if verbose or not log_dir:
        root.addHandler(_console_handler(sys.stderr, verbose=True))
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.ERROR)
        return
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log_fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    forwarded = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")  # what Ray streams to the driver
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    everything = _ours(logging.StreamHandler(sys.stderr))  # fd 2: the worker's log file now
    everything.setFormatter(logging.Formatter(FILE_FORMAT, "%H:%M:%S"))
    root.addHandler(everything)
    root.addHandler(_console_handler(forwarded, verbose=False))
