"""The example domain README's "Your own domain" shows: its generator's data loads, splits by customer, and every
answer (golden ones too) passes its schema."""
import json
import runpy
import shutil

import jsonschema

from lorafleet.config import load_domain
from lorafleet.data import prepare
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "support_tickets"


def test_support_tickets_example_generates_data_that_loads_and_validates(tmp_path):
    folder = tmp_path / "support_tickets"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("*.jsonl"))
    runpy.run_path(str(folder / "generate.py"), run_name="__main__")
    data = prepare(load_domain(folder / "support_tickets.yaml"))
    assert data.manifest.drops == [] and data.manifest.records_read > 300 and len(data.golden) == 12
    customers = [{e.group for e in split} for split in (data.train, data.val, data.test)]
    assert all(customers) and not (customers[0] & customers[1] or customers[0] & customers[2] or customers[1] & customers[2])
    for example in [*data.train, *data.val, *data.test, *data.golden]:
        jsonschema.validate(json.loads(example.completion), data.schema)
