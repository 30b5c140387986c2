"""Per-step pipelines: a pipeline file expands into one ordinary domain per step (named <pipeline>.<step>), chosen by
name, glob or pipeline name; each step's records are made by its declarative mapping (and prompt builder, whose
source hash reaches the contract); a missing field or a broken builder is an error naming file and step/record."""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from lorafleet import contract, data, publish, steps
from lorafleet.base_model import CHAT_TEMPLATE, DEFAULT_CORPUS, build_tokenizer, corpus_documents
from lorafleet.cli import _domain_files, build_parser
from lorafleet.config import ConfigError, DomainConfig, chooses, find_domain_files, load_domain, load_pipeline
from lorafleet.pipeline import load_configs
from lorafleet.results import DomainResult
from tests.conftest import DOMAINS_DIR

PIPELINES_DIR = DOMAINS_DIR.parent / "pipelines"
FOLKTALE = PIPELINES_DIR / "folktale.yaml"
STEPS = ["folktale.character", "folktale.relationship", "folktale.event"]


@pytest.fixture
def pipeline_copy(tmp_path):
    """The bundled folktale pipeline (YAML, data, schemas) in tmp_path, rewritten by ``change(raw)``; returns its
    path. The bundled prompt builder module stays where it is (imported from the repository's folder)."""

    def copy(change=None, records=None) -> Path:
        shutil.copytree(PIPELINES_DIR / "folktale", tmp_path / "folktale", dirs_exist_ok=True)
        raw = yaml.safe_load(FOLKTALE.read_text(encoding="utf-8"))
        if change:
            change(raw)
        if records is not None:
            lines = [json.dumps(r, ensure_ascii=False) for r in records]
            (tmp_path / "folktale" / "annotated.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        path = tmp_path / "folktale.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return copy


@pytest.fixture(autouse=True)
def _bundled_builders_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(PIPELINES_DIR))  # a copied pipeline's builders: the bundled module


def _records() -> list[dict]:
    lines = (PIPELINES_DIR / "folktale" / "annotated.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _builder_module(tmp_path: Path, body: str) -> str:
    """A module of the user's own, beside the pipeline file, with a fresh name (imports are cached by name)."""
    name = f"user_prompts_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body, encoding="utf-8")
    return name


# ---- expansion ------------------------------------------------------------------------------------------------

def test_the_bundled_pipeline_expands_into_one_domain_per_step():
    configs = load_pipeline(FOLKTALE)
    assert list(configs) == STEPS
    assert all(isinstance(c, DomainConfig) for c in configs.values()), configs
    character, relationship, event = configs.values()
    for cfg in configs.values():  # the source and the shared fields, in every step
        assert (cfg.data.format, cfg.data.group_key, cfg.data.seed) == ("messages", "tale_id", 7)
        assert Path(cfg.data_path) == PIPELINES_DIR / "folktale" / "annotated.jsonl"
        assert cfg.train.max_seq_length == 256 and cfg.sweep.space.lora_rank == [8] and cfg.source_file == str(FOLKTALE)
        assert cfg.step.pipeline == "folktale" and cfg.name == f"folktale.{cfg.step.step}"
    assert character.step.input == "text" and character.step.prompt is None
    assert character.step.target == {"doers": "annotations.characters.doers",
                                     "receivers": "annotations.characters.receivers"}
    assert Path(character.schema_path).name == "character.schema.json" and "doers" in character.system_prompt
    assert (character.eval.max_new_tokens, event.eval.max_new_tokens) == (96, 64)  # a step's own value over the shared
    assert event.eval.max_examples == character.eval.max_examples == 12  # one eval field overridden, the others shared
    import folktale_prompts

    source = inspect.getsource(folktale_prompts.build_relationship_prompt)
    assert relationship.step.prompt == "folktale_prompts:build_relationship_prompt"
    assert relationship.step.prompt_builder_sha256 == hashlib.sha256(source.encode()).hexdigest()


def test_overrides_apply_to_every_step_over_its_own_values():
    configs = load_pipeline(FOLKTALE, {"train": {"max_steps": 3}})
    assert {c.train.max_steps for c in configs.values()} == {3}


def test_the_records_are_made_by_the_mapping_and_the_builder(tmp_path):
    import folktale_prompts

    records = _records()
    character, relationship, event = load_pipeline(FOLKTALE).values()
    examples, n = data.load_examples(character)
    assert n == len(records) == len(examples)
    first = examples[0]
    assert first.user_text == records[0]["text"] and first.group == records[0]["tale_id"]
    assert first.prompt[0] == {"role": "system", "content": character.system_prompt}
    assert json.loads(first.completion) == records[0]["annotations"]["characters"]
    assert list(json.loads(first.completion)) == ["doers", "receivers"]  # the mapping's order
    # training prompts are the builder's: the serving code calls the same function
    for e, record in zip(data.load_examples(relationship)[0], records):
        assert e.user_text == folktale_prompts.build_relationship_prompt(record)
        assert json.loads(e.completion) == {"relationships": record["annotations"]["relationships"]}
    prepared = data.prepare(event, tmp_path / "event")
    assert prepared.manifest.domain == "folktale.event" and not prepared.manifest.drops
    assert {e.group for e in prepared.test}.isdisjoint({e.group for e in prepared.train})


def test_the_golden_scenes_are_mapped_by_every_step_and_meet_its_schema(tmp_path):
    import folktale_prompts

    golden = [json.loads(line) for line in (PIPELINES_DIR / "folktale" / "golden.jsonl").read_text().splitlines()]
    prepared = {name: data.prepare(cfg) for name, cfg in load_pipeline(FOLKTALE).items()}
    for name, step in prepared.items():
        assert len(step.golden) == len(golden) == 12, name
        assert not step.manifest.drops, name  # no golden scene is near a training scene
    assert ([e.user_text for e in prepared["folktale.relationship"].golden] ==
            [folktale_prompts.build_relationship_prompt(r) for r in golden])
    broken = [dict(golden[0], annotations={**golden[0]["annotations"], "action_category": "sing"}), *golden[1:]]
    (tmp_path / "golden.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in broken))
    event = load_pipeline(FOLKTALE, {"eval": {"golden": str(tmp_path / "golden.jsonl")}})["folktale.event"]
    with pytest.raises(data.DataError, match=r"golden\.jsonl:1: the answer breaks the schema: 'sing' is not one of"):
        data.prepare(event)


# ---- choosing steps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chosen,expected", [
    (["folktale.*"], STEPS), (["folktale"], STEPS), (["folktale.event"], ["folktale.event"]),
    (["*.character", "folktale.ev*"], ["folktale.character", "folktale.event"]), (None, STEPS)])
def test_domains_choose_steps_by_name_glob_or_pipeline(chosen, expected):
    files = find_domain_files(DOMAINS_DIR, chosen, PIPELINES_DIR)
    assert FOLKTALE in files
    configs, failed = load_configs(files, {}, chosen)
    assert not failed
    assert [n for n in configs if n.startswith("folktale")] == expected
    assert [n for n in STEPS if chooses(chosen, n)] == expected


def test_a_choice_that_matches_nothing_is_an_error_and_domains_alone_stay_apart():
    with pytest.raises(ConfigError, match=r"no domain file for folktale\.nope \(have: .*folktale\.character"):
        find_domain_files(DOMAINS_DIR, ["folktale.nope"], PIPELINES_DIR)
    assert find_domain_files(DOMAINS_DIR, ["legal", "folktale.event"], PIPELINES_DIR) == [DOMAINS_DIR / "legal.yaml",
                                                                                          FOLKTALE]
    assert FOLKTALE not in find_domain_files(DOMAINS_DIR)  # no pipeline folder given: domain files only


def test_the_cli_finds_the_pipelines_beside_the_domains_folder(tmp_path):
    args = build_parser().parse_args(["validate", "--config-dir", str(DOMAINS_DIR)])
    assert FOLKTALE in _domain_files(args)
    (tmp_path / "domains").mkdir()
    shutil.copy(DOMAINS_DIR / "legal.yaml", tmp_path / "domains")
    args = build_parser().parse_args(["validate", "--config-dir", str(tmp_path / "domains")])
    assert _domain_files(args) == [tmp_path / "domains" / "legal.yaml"]  # no pipelines folder beside it


# ---- domain names with a dot are safe storage keys ------------------------------------------------------------

def test_a_step_domain_is_a_storage_key_and_unsafe_dotted_names_are_not():
    assert publish.domain_prefix("run-1", "folktale.character") == "runs/run-1/folktale.character"
    assert publish.latest_key("folktale.character") == "domains/folktale.character/latest.json"
    for bad in ["a..b", ".a", "a.", "a/.b", "a./b", "..", "a.B", "a.-b"]:
        with pytest.raises(publish.PublishError, match="not a safe storage key"):
            publish.latest_key(bad)


@pytest.mark.parametrize("bad_name", ["a..b", ".hidden", "trailing.", "../x", "a.b/c"])
def test_bad_dotted_domain_names_are_rejected(domain_copy, bad_name):
    path = domain_copy("contracts")
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "name": bad_name}))
    with pytest.raises(ConfigError, match=r"name: Value error, domain name"):
        load_domain(path)


def test_a_domain_file_cannot_set_a_step_section(domain_copy):
    path = domain_copy("contracts")
    path.write_text(path.read_text() + "\nstep: {pipeline: x, step: y, input: text, target: {a: b}}\n")
    with pytest.raises(ConfigError, match=r"contracts.yaml: step: set by a pipeline file"):
        load_domain(path)


# ---- bad input: named file and step, or file and record --------------------------------------------------------

def test_a_missing_field_in_a_later_record_names_file_record_and_step(pipeline_copy):
    records = _records()
    del records[7]["annotations"]["event_type"]
    path = pipeline_copy(records=records)
    event = load_pipeline(path)["folktale.event"]  # the first records are fine: it loads
    with pytest.raises(data.DataError, match=r"annotated\.jsonl:8: step folktale\.event: target\.event_type: "
                                             r"annotations\.event_type: no field 'event_type' in annotations"):
        data.prepare(event)


def test_a_mapping_to_a_missing_field_is_found_at_load_naming_file_step_and_record(pipeline_copy):
    path = pipeline_copy(lambda raw: raw["steps"][0]["target"].update(doers="annotations.characters.doer"))
    configs = load_pipeline(path)
    error = configs["folktale.character"]
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"{path}: step folktale.character: target.doers: annotations.characters.doer: "
                                 "no field 'doer' in annotations.characters (record ")
    assert "annotated.jsonl:1)" in str(error)
    assert isinstance(configs["folktale.event"], DomainConfig)  # the other steps still load
    _, failed = load_configs([path], {})
    assert set(failed) == {"folktale.character"}


@pytest.mark.parametrize("body,problem", [
    ("def build(record):\n    raise KeyError('summary')\n", r"raised KeyError: 'summary'"),
    ("def build(record):\n    return {'text': record['text']}\n", r"returned dict, expected a string"),
    ("def build(record):\n    return None\n", r"returned NoneType, expected a string"),
    ("def build(record):\n    return '  '\n", r"returned an empty string"),
    ("raise RuntimeError('boom')\n", r"cannot import user_prompts_\w+: RuntimeError: boom"),
    ("build = 3\n", r"is a int, not a function"),
])
def test_a_builder_that_fails_or_returns_no_string_is_rejected_at_load(pipeline_copy, tmp_path, body, problem):
    module = _builder_module(tmp_path, body)
    path = pipeline_copy(lambda raw: raw["steps"][2].update(prompt=f"{module}:build"))
    error = load_pipeline(path)["folktale.event"]
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"{path}: step folktale.event: ")
    assert re.search(problem, str(error)), str(error)


def test_a_builder_is_imported_from_beside_the_pipeline_file_without_shadowing_installed_modules(pipeline_copy,
                                                                                                tmp_path):
    module = _builder_module(tmp_path, "import json\n\ndef build(record):\n    return json.dumps(record['text'])\n")
    (tmp_path / "json.py").write_text("raise RuntimeError('a stray json.py must not shadow the standard one')\n")
    path = pipeline_copy(lambda raw: raw["steps"][2].update(prompt=f"{module}:build"))
    event = load_pipeline(path)["folktale.event"]
    assert isinstance(event, DomainConfig), event
    assert str(tmp_path) not in sys.path  # only while importing
    assert data.load_examples(event)[0][0].user_text == json.dumps(_records()[0]["text"])


@pytest.mark.parametrize("change,problem", [
    (lambda raw: raw["steps"][0].update(prompt="folktale_prompts:build_event_prompt"), "either input .* or prompt"),
    (lambda raw: raw["steps"][0].pop("input"), "either input .* or prompt"),
    (lambda raw: raw["steps"][0].update(target={}), "target: needs at least one"),
    (lambda raw: (raw["steps"][0].pop("input"), raw["steps"][0].update(prompt="no colon")), "not module:function"),
    (lambda raw: raw["steps"][1].update(prompt="folktale_prompts:nope"), "folktale_prompts has no nope"),
    (lambda raw: raw["steps"][0].update(train={"max_stpes": 3}), r"train\.max_stpes: Extra inputs"),
])
def test_a_bad_step_is_named(pipeline_copy, change, problem):
    path = pipeline_copy(change)
    errors = [e for e in load_pipeline(path).values() if isinstance(e, ConfigError)]
    assert len(errors) == 1 and str(errors[0]).startswith(f"{path}: step folktale."), errors
    assert re.search(problem, str(errors[0])), str(errors[0])


@pytest.mark.parametrize("change,problem", [
    (lambda raw: raw.update(data={"path": "x"}), r"data: a pipeline's steps read source"),
    (lambda raw: raw.update(name="Folk.tale"), r"name: a pipeline name must match"),
    (lambda raw: raw["steps"][1].update(name="character"), r"steps\.1\.name: 'character' is used by an earlier"),
    (lambda raw: raw["steps"][1].update(name="a.b"), r"steps\.1\.name: must match"),
    (lambda raw: raw["source"].pop("group_key"), r"source\.group_key: Field required"),
    (lambda raw: raw.update(steps=[]), r"steps: a non-empty list"),
])
def test_a_bad_pipeline_file_is_named(pipeline_copy, change, problem):
    path = pipeline_copy(change)
    with pytest.raises(ConfigError, match=rf"^{path}: {problem}"):
        load_pipeline(path)


def test_lookup_reads_dotted_paths_and_list_indexes():
    record = {"a": {"b": [{"c": 1}, {"c": 2}]}, "n": None}
    assert steps.lookup(record, "a.b.1.c") == 2 and steps.lookup(record, "n") is None
    for dotted, problem in [("a.x", "no field 'x' in a"), ("a.b.5", "no item '5' in a.b"),
                            ("n.m", "a NoneType has no field 'm' in n")]:
        with pytest.raises(steps.StepError, match=problem):
            steps.lookup(record, dotted)


# ---- the contract records the builder ----------------------------------------------------------------------------

def test_the_contract_names_the_builder_and_its_source_hash(tmp_path):
    relationship = load_pipeline(FOLKTALE)["folktale.relationship"]
    folder = tmp_path / "model"
    tokenizer = build_tokenizer(corpus_documents(DEFAULT_CORPUS.read_text(encoding="utf-8")[:100_000]), 400)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
                                                    "num_attention_heads": 4, "num_key_value_heads": 2}))
    schema = json.loads(Path(relationship.schema_path).read_text())
    example = data.load_examples(relationship)[0][0]
    result = DomainResult(name=relationship.name, status="published", dataset_version="d" * 64)
    contract.write_contract(folder, "merged", relationship, schema, result, "run-1", example)
    written = contract.read_contract(folder)
    assert written.domain == "folktale.relationship"
    assert written.prompt_builder == contract.PromptBuilder(name="folktale_prompts:build_relationship_prompt",
                                                            sha256=relationship.step.prompt_builder_sha256)
    card = (folder / "README.md").read_text()
    assert "folktale_prompts:build_relationship_prompt" in card and "from folktale_prompts import" in card
    # the prompt from the folder alone, for the message the builder makes, is the training prompt
    character = load_pipeline(FOLKTALE)["folktale.character"]
    assert contract.prompt_builder_of(character) is None
