"""The human review's report as a real browser sees it: a bundled domain's run, gated 'not reviewed', reviewed by
`lorafleet review export | import`; headless Chromium loads review/report.html and dumps the DOM."""
import re

import pytest

from lorafleet import review
from tests.integration.test_report_chromium import _browse
from tests.review_sample import DOMAIN, export_and_rate, publish_run

pytestmark = pytest.mark.integration


def test_chromium_renders_the_review_verdict_first_then_ratings_and_gate(tmp_path):
    store = str(tmp_path / "store")
    publish_run(tmp_path, store, "night-1", {"human_min_improvement": 0.5, "require_review": True})
    out = tmp_path / "review.csv"
    export_and_rate(store, "night-1", out)
    done = review.import_file(out, store)
    page = tmp_path / "store" / "runs" / "night-1" / DOMAIN / "review" / "report.html"
    shown = _browse(tmp_path, "--dump-dom", page.as_uri())
    assert shown.returncode == 0, shown.stderr[-2000:]
    body = shown.stdout[shown.stdout.index("<body"):]
    first = re.search(r"<body[^>]*>\s*<(\w+)([^>]*)>([^<]*)<", body)
    assert first and 'class="verdict v-published"' in first.group(2), body[:500]
    assert first.group(3).startswith("PUBLISHED") and "reviewed" in first.group(3)
    human = re.search(r'<table class="human">.*?</table>', body, flags=re.DOTALL).group(0)
    assert human.count("<tr") == 4 and f"{done.review.ratings.delta.value:+.3f}" in human and 'class="better"' in human
    gate = re.search(r'<table class="gate">.*?</table>', body, flags=re.DOTALL).group(0)
    assert "human rating gain &gt; 0.5" in gate and "pass" in gate
    rated = re.search(r'<table class="rated">.*?</table>', body, flags=re.DOTALL).group(0)
    assert rated.count("<tr") == 1 + done.records
