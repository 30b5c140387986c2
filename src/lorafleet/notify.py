"""Tell people how a run ended: one Slack-compatible message per webhook (domains whose configs name the same
environment variable share one) with each domain's verdict, key numbers, what changed since its last published
run, and links. The webhook URL lives in the environment only: it is never logged, not even inside an error, and
a webhook that fails never fails the run."""
from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable
from typing import Any

from lorafleet.console import progress
from lorafleet.lineage import Lineage
from lorafleet.results import DomainResult, RunSummary

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
MAX_BLOCKS = 50  # Slack's limits: blocks per message, characters per section
SECTION_CHARS = 3000
ERROR_CHARS = 500
ICONS = {"published": ":white_check_mark:", "gated": ":no_entry:", "failed": ":x:"}  # any other status: OTHER_ICON
OTHER_ICON = ":information_source:"


def what_changed(previous: Lineage | None, current: Lineage) -> list[str]:
    """How the inputs of this run's model differ from those of the domain's latest published one (their lineages),
    a phrase each: data, config (by section), base model or its weights, lorafleet's code, package versions."""
    if previous is None:
        return ["first publication"]
    changes = []
    if previous.dataset_version != current.dataset_version:
        changes.append(f"data changed (version {previous.dataset_version[:8]} -> {current.dataset_version[:8]})")
    sections = sorted(key for key in previous.config.keys() | current.config.keys()
                      if key != "base_model" and previous.config.get(key) != current.config.get(key))
    if sections:
        changes.append(f"config changed ({', '.join(sections)})")
    if previous.base_model != current.base_model:
        changes.append(f"base model changed ({previous.base_model} -> {current.base_model})")
    elif previous.base_model_sha256 != current.base_model_sha256:
        changes.append("base weights changed")
    if (previous.lorafleet_version, previous.git_commit) != (current.lorafleet_version, current.git_commit):
        changes.append(f"lorafleet changed ({_code(previous)} -> {_code(current)})")
    packages = [f"{name} {previous.packages.get(name, 'none')} -> {current.packages.get(name, 'none')}"
                for name in sorted(previous.packages.keys() | current.packages.keys())
                if previous.packages.get(name) != current.packages.get(name)]
    if packages:
        changes.append(f"packages changed ({', '.join(packages)})")
    return changes or [f"same data, config, base weights and code as run {previous.run_id}"]


def _code(record: Lineage) -> str:
    return f"{record.lorafleet_version} {record.git_commit[:8]}" if record.git_commit else record.lorafleet_version


def audiences(webhook_of: dict[str, str | None], domains: Iterable[str]) -> dict[str, list[str]]:
    """Webhook variable -> the run's domains its message covers: those whose config names it, and every domain
    without a loaded config (its YAML did not load, so it names no webhook: every message tells of it).
    ``webhook_of``: each loaded config's ``notify.webhook_env``."""
    domains = list(domains)
    variables = dict.fromkeys(env for env in webhook_of.values() if env)
    return {env: [d for d in domains if d not in webhook_of or webhook_of[d] == env] for env in variables}


def build_message(summary: RunSummary, domains: list[str], changes: dict[str, list[str]]) -> dict[str, Any]:
    """A Slack message on ``domains`` of the run: ``text`` (what a notification shows) and ``blocks`` of mrkdwn
    sections: the run's headline, one section a domain (verdict, key numbers, failed checks or error, what changed
    since its last published run, its report), and the run's index and summary."""
    results = [summary.domains[name] for name in domains]
    counts = Counter(r.status for r in results)
    headline = (f"lorafleet run {summary.run_id}: {summary.status} in {_duration(summary.seconds)}, "
                + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    sections = [_domain_section(r, changes.get(r.name, [])) for r in results]
    room = MAX_BLOCKS - 2  # the headline and the links
    if len(sections) > room:
        sections = [*sections[:room - 1], f"... and {len(sections) - room + 1} more domains: see the run index"]
    links = [f"{label}: {_link(uri)}" for label, uri in (("index", summary.index_uri), ("summary", summary.summary_uri))
             if uri]
    texts = [f"*{_escape(headline)}*", *sections, "\n".join(links) or "no links: the run wrote no summary"]
    return {"text": headline,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": t[:SECTION_CHARS]}} for t in texts]}


def _domain_section(result: DomainResult, changes: list[str]) -> str:
    kept = " (kept as an earlier attempt of this run published it)" if result.resumed else ""
    lines = [f"{ICONS.get(result.status, OTHER_ICON)} *{_escape(result.name)}*: {_escape(result.status.upper())}{kept}"]
    if result.key_metrics:
        lines.append(" · ".join(f"{_escape(k)} {_number(k, v)}" for k, v in result.key_metrics.items()))
    if result.gate and result.gate.failed:
        lines.append("failed checks: " + _escape(", ".join(result.gate.failed)))
    if result.error:
        error = result.error if len(result.error) <= ERROR_CHARS else result.error[:ERROR_CHARS] + "..."
        lines.append(f"error: {_escape(error)}")
    if changes:
        lines.append("changes: " + _escape("; ".join(changes)))
    if result.artifacts:
        lines.append(f"report: {_link(result.artifacts.report)}")
    return "\n".join(lines)


def _number(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if name.endswith("gain"):
        return f"{value:+.1f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _escape(text: str) -> str:
    """Text as Slack's mrkdwn shows it literally: its control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(uri: str) -> str:
    """A web address as a link; a storage URI (s3://, a local path) as code, which Slack cannot open anyway."""
    if uri.startswith(("https://", "http://")):
        return f"<{_escape(uri)}|{_escape(uri.rsplit('/', 1)[-1])}>"
    return f"`{_escape(uri)}`"


def send(webhook_env: str, message: dict[str, Any], timeout: float = TIMEOUT_SECONDS) -> bool:
    """POST ``message`` as JSON to the URL held by the environment variable ``webhook_env``; whether it was
    accepted. A webhook that fails (unset, not http(s), refused, timed out, an HTTP error) is a warning naming the
    variable, never the URL, and never an exception."""
    url = os.environ.get(webhook_env, "").strip()
    if not url:
        log.warning("notify: %s is not set; no message sent", webhook_env)
        return False
    try:
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            log.warning("notify: %s does not hold an http(s) URL; no message sent", webhook_env)
            return False
        request = urllib.request.Request(url, data=json.dumps(message).encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except Exception as exc:  # noqa: BLE001 - whatever the webhook does, the run has ended; it is a warning
        log.warning("notify: the webhook in %s failed; no message sent: %s", webhook_env,
                    redact(f"{type(exc).__name__}: {exc}", url))
        return False
    progress.info("notify: message sent to the webhook in %s", webhook_env)
    return True


def redact(text: str, url: str) -> str:
    """``text`` without the URL or the parts of it that identify the webhook (host, path, query)."""
    try:
        parts = urllib.parse.urlsplit(url)
        secrets = {url, parts.netloc, parts.path, parts.query}
    except ValueError:
        secrets = {url}
    for secret in sorted(secrets - {"", "/"}, key=len, reverse=True):
        text = text.replace(secret, "<webhook>")
    return text
