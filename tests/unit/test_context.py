"""Context injection: a context file read in each of its forms and refused, naming file, line and entity, when it cannot
be used; each record's entity rendered into the system prompt for training and evaluation alike and taken out again for
the comparison without it; context_grounding; the comparison in the results, gate and report; the published folder's
copy and a newer file at predict time (a brand added without retraining)."""
import hashlib
import json
from pathlib import Path

import pytest

from lorafleet import contract, data, gate, metrics, predict, prompt, report
from lorafleet.config import ConfigError, load_domain
from lorafleet.context import ContextError, parse_context, read_context
from lorafleet.evaluate import SplitScores, score_answers
from lorafleet.lineage import prompt_sha256
from lorafleet.pipeline import ModelScores, compare
from lorafleet.results import DomainResult
from tests.conftest import DOMAINS_DIR

TEMPLATE = "Brand: {brand}\nTone: {tone}\nHashtags: {hashtags}"
BRANDS = [{"brand": "SiamBrew", "tone": ["playful", "warm"], "hashtags": ["#SiamBrew", "#SlowSip"]},
          {"brand": "GlowLab", "tone": "premium", "hashtags": ["#GlowLab", "#SkinFirst"]}]


def _read(text: str, name: str = "brands.json", fields=("hashtags",)):
    return parse_context(text.encode(), name, "brand", TEMPLATE, tuple(fields))


@pytest.mark.parametrize("text, suffix, where", [
    (json.dumps(BRANDS, indent=2), ".json", "line 2, record [0]"),
    (json.dumps({"brands": BRANDS}, indent=2), ".json", "line 3, brands[0]"),
    ("\n".join(json.dumps(b) for b in BRANDS) + "\n", ".jsonl", "line 1, brand record"),
])
def test_a_context_file_reads_as_a_json_array_a_wrapped_array_or_jsonl(text, suffix, where):
    context = _read(text)
    assert list(context.entities) == ["SiamBrew", "GlowLab"] and context.suffix == suffix
    assert context.where["SiamBrew"] == where
    assert context.render("SiamBrew") == "Brand: SiamBrew\nTone: playful, warm\nHashtags: #SiamBrew, #SlowSip"
    assert context.render("GlowLab") == "Brand: GlowLab\nTone: premium\nHashtags: #GlowLab, #SkinFirst"
    assert context.grounding_items("GlowLab") == (("#GlowLab", "#SkinFirst"), ("#SiamBrew", "#SlowSip"))
    assert context.sha256 == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("text, message", [
    ('{"brands": [\n  {"brand": "A", "tone": "x", "hashtags": []},\n  {"brand": "B" "tone": "y"}\n]}',
     r"^brands\.json:3:17: not valid JSON: Expecting ',' delimiter$"),
    ('{"brand": "A", "tone": "x", "hashtags": []}\n{"brand": "B", \n',
     r"^brands\.json:2:16: not valid JSON \(a JSONL file: one JSON object a line\)"),
    ('[\n {"brand": "A", "tone": "x", "hashtags": []},\n {"brand": "B", "hashtags": []}\n]',
     r"^brands\.json:3: record \[1\] \(brand 'B'\): no field 'tone', which the template names$"),
    ('[{"brand": "A", "tone": "x"}]', r"record \[0\] \(brand 'A'\): no field 'hashtags', which the template names"),
    ('[{"brand": "A", "tone": "x", "hashtags": [1]}]', r"grounding field 'hashtags' must be a string or a list"),
    ('[{"brand": "A", "tone": "x", "hashtags": []},\n{"brand": "A", "tone": "y", "hashtags": []}]',
     r"brands\.json:2: record \[1\] \(brand 'A'\): brand 'A' is already the key of line 1, record \[0\]"),
    ('[{"name": "A", "tone": "x", "hashtags": []}]', r"record \[0\]: has no 'brand' field"),
    ('{"a": [], "b": []}', r"expected entity records: .*got an object with keys a, b"),
    ("[]", r"brands\.json: no entity records"),
])
def test_an_unusable_context_file_is_named_with_the_line_and_the_entity(text, message):
    with pytest.raises(ContextError, match=message):
        _read(text)


def test_a_grounding_field_the_records_lack_is_named():
    with pytest.raises(ContextError, match=r"record \[1\] \(brand 'GlowLab'\): no field 'slogans', which "
                                           r"context.grounding_fields names"):
        _read(json.dumps([{**BRANDS[0], "slogans": "Sip slow"}, BRANDS[1]]), fields=("slogans",))


@pytest.mark.parametrize("template, message", [
    ("Brand: {brand.name}", r"\{brand.name\} is not a plain field name"),
    ("Brand: {0}", r"\{0\} is not a plain field name"),
    ("Brand: {brand", r"not a str.format template"),
    ("Brand only", r"names no field"),
])
def test_a_template_with_fields_format_cannot_fill_is_refused(template, message):
    with pytest.raises(ContextError, match=message):
        parse_context(json.dumps(BRANDS).encode(), "b.json", "brand", template)


def _captions():
    return load_domain(DOMAINS_DIR / "brand_captions.yaml")


def test_the_config_names_the_context_file_and_what_is_wrong_with_it(domain_copy):
    path = domain_copy("brand_captions")
    brands = path.parent / "brand_captions" / "brands.json"
    cfg = load_domain(path)
    assert (cfg.context.key, cfg.context.grounding_fields, cfg.data.group_key) == ("brand", ["hashtags"], "brand")
    original = brands.read_text()
    edited = json.loads(original)
    edited["brands"][11]["mood"] = edited["brands"][11].pop("tone")
    brands.write_text(json.dumps(edited, indent=2))
    with pytest.raises(ConfigError, match=rf"{path.name}: context: {brands}:\d+: brands\[11\] \(brand 'SilkRoom'\): "
                                          r"no field 'tone', which the template names"):
        load_domain(path)
    brands.write_text(original[:-20])
    with pytest.raises(ConfigError, match=rf"context: {brands}:\d+:\d+: not valid JSON"):
        load_domain(path)
    brands.unlink()
    with pytest.raises(ConfigError, match=rf"{path.name}: context.path: file not found: {brands}"):
        load_domain(path)
    with pytest.raises(ConfigError, match=r"context.template: Value error, .*\{tone!r\} is not a plain field name"):
        load_domain(DOMAINS_DIR / "brand_captions.yaml", {"context": {"template": "Tone: {tone!r}"}})
    with pytest.raises(ConfigError, match=r"gate.context_min_improvement: .*no context section"):
        load_domain(DOMAINS_DIR / "contracts.yaml", {"gate": {"context_min_improvement": {"score": 1}}})
    with pytest.raises(ConfigError, match=r"select.rule.2.metric: context_grounding is never measured: "
                                          r"context.grounding_fields is empty"):
        load_domain(DOMAINS_DIR / "brand_captions.yaml", {"context": {"grounding_fields": []}})


def test_a_record_whose_brand_the_context_file_lacks_is_named_with_both_files(domain_copy):
    path = domain_copy("brand_captions")
    data_file = path.parent / "brand_captions" / "data.jsonl"
    lines = data_file.read_text().splitlines()
    lines[6] = lines[6].replace('"brand": "', '"brand": "Nope', 1)
    data_file.write_text("\n".join(lines) + "\n")
    cfg = load_domain(path)
    with pytest.raises(data.DataError, match=rf"^{data_file}:7: brand 'Nope\w+' is not in the context file "
                                             rf"{cfg.context_path} \(12 entities: "):
        data.prepare(cfg)
    record = json.loads(lines[7])
    del record["brand"]
    lines[6] = json.dumps(record, ensure_ascii=False)
    data_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataError, match=rf"^{data_file}:7: missing field 'brand'"):
        data.prepare(load_domain(path))


def test_every_prompt_carries_its_brands_context_after_the_system_prompt_and_can_be_asked_without_it():
    cfg = _captions()
    prepared = data.prepare(cfg)
    context = prepared.context
    assert prepared.manifest.context_sha256 == hashlib.sha256(Path(cfg.context_path).read_bytes()).hexdigest()
    for e in [*prepared.train[:5], *prepared.test[:5], *prepared.golden[:3]]:
        system = e.prompt[0]["content"]
        assert e.entity == e.group and e.context == context.render(e.entity)
        assert system == cfg.system_prompt + "\n\n" + e.context
        assert f"Hashtags: {', '.join(context.entities[e.entity]['hashtags'])}" in system
        bare = e.without_context()
        assert bare.prompt == [{"role": "system", "content": cfg.system_prompt}, *e.prompt[1:]]
        assert (bare.id, bare.entity, bare.completion) == (e.id, e.entity, e.completion)
    # held out: the test split's brands are brands no training record has
    assert not {e.entity for e in prepared.test} & {e.entity for e in prepared.train}
    # a record with a system turn of its own gets the context after it
    turns = [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}]
    assert prompt.with_system_prompt(turns, "Domain.", "Brand: X")[0] == {"role": "system", "content": "Own.\n\nBrand: X"}
    assert prompt.with_system_prompt(turns, "Domain.") == turns


@pytest.mark.parametrize("answer, expected", [
    ('{"hashtags": ["#GlowLab", "#SkinFirst"], "caption": "x"}', 1.0),
    ('{"hashtags": ["#glowlab"], "caption": "x"}', 0.5),  # case does not matter
    ('{"hashtags": ["#GlowLab", "#SlowSip"]}', 0.0),  # another brand's hashtag: not grounded in its own context
    ('{"hashtags": ["#GlowLabs", "#SkinFirstly"]}', 0.0),  # whole words only
    ("#GlowLab. #SkinFirst!", 1.0),
    ("not json at all", 0.0),
])
def test_context_grounding_counts_the_brands_items_and_zeroes_another_brands(answer, expected):
    own, others = _read(json.dumps(BRANDS)).grounding_items("GlowLab")
    assert metrics.context_grounding(answer, own, others) == expected


def test_thai_items_match_inside_thai_text():
    assert metrics.context_grounding("ลดราคากาแฟวันนี้", ["กาแฟ"], ["ชาเย็น"]) == 1.0
    assert metrics.context_grounding("x", []) is None


def _scores(cfg, context, examples, answers) -> SplitScores:
    scored = score_answers(examples, answers, {}, cfg.eval, context)
    return SplitScores(metrics.aggregate([a.score for a in scored]), scored, token_ids=[])


def test_the_comparison_with_and_without_context_reaches_results_gate_and_report(tmp_path):
    cfg = _captions()
    prepared = data.prepare(cfg)
    test = prepared.test[: cfg.eval.max_examples]
    wrong = [json.dumps({"hashtags": ["#SiamBrew"], "caption": "x"}) for _ in test]  # a training brand's
    half = [e.completion if i % 2 else w for i, (e, w) in enumerate(zip(test, wrong))]

    def model(answers) -> ModelScores:
        return ModelScores(test=_scores(cfg, prepared.context, test, answers), golden=None)

    result, _ = compare(cfg, model(wrong), model(half), None, model(wrong), prepared)
    ctx = result.context
    assert ctx.key == "brand" and sorted(ctx.entities) == sorted(ctx.unseen) == ["GreenLeaf", "TechZone"]
    assert ctx.without.value("context_grounding") == 0.0 and result.tuned.value("context_grounding") == 0.5
    gain = ctx.gain.metrics["context_grounding"]
    assert gain.value == 0.5 and 0.0 < gain.ci[0] < 0.5 < gain.ci[1]
    verdict = gate.decide(cfg.gate, result)
    check = next(c for c in verdict.checks if c.kind == "context_improvement")
    assert check.passed and check.value == pytest.approx(gain.ci[0])
    assert "2 of 2 entities unseen in training" in check.detail
    flat, _ = compare(cfg, model(wrong), model(wrong), None, model(wrong), prepared)
    assert not next(c for c in gate.decide(cfg.gate, flat).checks if c.kind == "context_improvement").passed

    domain = DomainResult(name=cfg.name, status="published", test=result, gate=verdict)
    assert domain.key_metrics["context gain"] == 0.5
    assert DomainResult.from_json(json.loads(json.dumps(domain.to_json()))) == domain
    rendered = report.DomainReport(run_id="r", base_model="tiny", result=domain)
    md, page = report.render_markdown(rendered), report.render_html(rendered)
    assert "## Context: tuned with vs without" in md and "GreenLeaf, TechZone" in md
    row = md.split("## Context: tuned with vs without")[1].split("| context_grounding |")[1].split("\n")[0]
    row = "| context_grounding |" + row
    assert row.startswith("| context_grounding | 0.500 [") and "| 0.000 [0.000, 0.000] | +0.500 [" in row
    assert '<table class="metrics metrics-context">' in page and "gain (with − without)" in page
    assert "## Context: tuned with vs without" in report.result_markdown(domain)  # the model card's numbers


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """brand_captions' ONNX folder as the pipeline writes its contract (a tiny tokenizer, no weights): the published
    copy of brands.json beside lorafleet_model.json."""
    from lorafleet.base_model import CHAT_TEMPLATE, DEFAULT_CORPUS, build_tokenizer, corpus_documents

    folder = tmp_path_factory.mktemp("onnx")
    tokenizer = build_tokenizer(corpus_documents(DEFAULT_CORPUS.read_text(encoding="utf-8")[:100_000]), 400)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "hidden_size": 64}))
    cfg = _captions()
    prepared = data.prepare(cfg)
    contract.write_contract(folder, "merged", cfg, prepared.schema, DomainResult(name=cfg.name, status="published"),
                            "run-1", prepared.test[0], context=prepared.context)
    return folder


def test_the_published_folder_carries_the_context_file_and_asks_as_training_asked(published):
    cfg = _captions()
    model = contract.read_contract(published)
    spec = model.context
    assert (spec.file, spec.key, spec.template, spec.grounding_fields, spec.entities) == \
        ("context.json", "brand", cfg.context.template, ["hashtags"], 12)
    assert (published / "context.json").read_bytes() == Path(cfg.context_path).read_bytes()
    assert spec.sha256 == hashlib.sha256(Path(cfg.context_path).read_bytes()).hexdigest()
    assert "context.json" in {f.name for f in model.files}
    assert model.prompt_sha256 != prompt_sha256(cfg.system_prompt, (published / "chat_template.jinja").read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(published))
    for e in data.prepare(cfg).test[:4]:
        training = tokenizer.apply_chat_template(e.prompt, tokenize=False, add_generation_prompt=True)
        assert contract.render_prompt(published, e.user_text, e.entity) == training
    with pytest.raises(ValueError, match="name the entity"):
        contract.render_prompt(published, "x")
    card = (published / "README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0]
    compile(code, "README.md", "exec")
    assert "CONTEXT = " in code and "context.json" in code and "needs no retraining" in card


def _with_new_brand(published: Path, dest: Path) -> Path:
    brands = json.loads((published / "context.json").read_text())
    brands["brands"].append({"brand": "NoodleNook", "industry": "noodle bar", "tone": ["playful", "loud"],
                             "values": ["late nights"], "audience": "students", "hashtags": ["#NoodleNook", "#SlurpUp"]})
    dest.write_text(json.dumps(brands, ensure_ascii=False, indent=2))
    return dest


def test_predict_asks_a_brand_added_only_to_a_newer_context_file_without_retraining(published, tmp_path):
    model = contract.read_contract(published)
    requests = tmp_path / "in.jsonl"
    requests.write_text(json.dumps({"id": "n1", "brand": "NoodleNook", "instruction": "Write a caption.",
                                    "input": "Product: tom yum noodles\nOffer: 20% off until 1/2"}, ensure_ascii=False) + "\n"
                        + json.dumps({"id": "g1", "brand": "GlowLab", "instruction": "Write a caption.", "input": "x"}) + "\n")
    with pytest.raises(predict.PredictError, match=rf"in\.jsonl:1: brand 'NoodleNook' is not in the context file "
                                                   rf"{published / 'context.json'} \(12 entities"):
        predict.read_requests(requests, model, contract.read_context(published, model))
    newer = contract.read_context(published, model, _with_new_brand(published, tmp_path / "brands-v2.json"))
    asked = predict.read_requests(requests, model, newer)
    assert asked[0].context == "Brand: NoodleNook\nTone: playful, loud\nHashtags: #NoodleNook, #SlurpUp"
    assert asked[1].context == contract.read_context(published, model).render("GlowLab")
    text = contract.render_messages(published, model, prompt.with_system_prompt(asked[0].messages, model.system_prompt,
                                                                                asked[0].context))
    assert "Hashtags: #NoodleNook, #SlurpUp" in text and model.system_prompt + "\n\nBrand: NoodleNook" in text
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"id": 1, "instruction": "x", "input": "y"}\n')
    with pytest.raises(predict.PredictError, match=r"missing\.jsonl:1: missing field 'brand'"):
        predict.read_requests(missing, model, newer)


def test_an_id_and_input_record_names_its_entity_in_its_own_field(tmp_path):
    """{"id", "input", "brand"}: a messages domain asked with context (the contracts domain, given one here)."""
    brands = tmp_path / "brands.jsonl"
    brands.write_text("".join(json.dumps(b) + "\n" for b in BRANDS))
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {"context": {"path": str(brands), "key": "brand",
                                                                   "template": TEMPLATE}})
    spec = contract.ContextSpec(file="context.jsonl", key="brand", template=TEMPLATE, sha256="s", entities=2)
    model = contract.ModelContract(
        domain=cfg.name, kind="onnx", dtype="float32", description="", base_model="tiny", run_id="r",
        dataset_version="d", lorafleet_version="0", inputs=[], outputs=[], kv_cache=None,
        system_prompt=cfg.system_prompt, special_tokens={}, prompt_sha256="p",
        message_format=prompt.MessageFormat.of("messages"), generation={"max_new_tokens": 4}, context=spec, files=[])
    request = predict.request_of({"id": 3, "input": "Clause.", "brand": "SiamBrew"}, model, 1, read_context(
        str(brands), "brand", TEMPLATE))
    assert request.messages == [{"role": "user", "content": "Clause."}]
    assert request.context == "Brand: SiamBrew\nTone: playful, warm\nHashtags: #SiamBrew, #SlowSip"


def _fake_model(spec: contract.ContextSpec | None):
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml")
    model = contract.ModelContract(
        domain=cfg.name, kind="onnx", dtype="float32", description="", base_model="tiny", run_id="r",
        dataset_version="d", lorafleet_version="0", inputs=[], outputs=[], kv_cache=None,
        system_prompt=cfg.system_prompt, special_tokens={}, prompt_sha256="p",
        message_format=prompt.MessageFormat.of("messages"), generation={"max_new_tokens": 4}, context=spec, files=[])

    class Model:
        def __init__(self, folder, context_file=None):
            self.contract, self.context = model, None

    return Model


@pytest.mark.parametrize("spec, args, message", [
    (None, ["--entity", "SiamBrew"], "--entity: domain contracts is asked without context"),
    (contract.ContextSpec(file="context.json", key="brand", template=TEMPLATE, sha256="s", entities=2), [],
     "domain contracts is asked with a brand's context: give --entity (the brand)"),
])
def test_the_cli_wants_the_entity_exactly_where_the_model_is_asked_with_context(monkeypatch, capsys, spec, args,
                                                                                 message):
    from lorafleet import cli

    monkeypatch.setattr(predict, "model_folder", lambda *a: Path("unused"))
    monkeypatch.setattr(predict, "OnnxModel", _fake_model(spec))
    assert cli.main(["predict", "contracts", "--input", "x", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_context_files_hash_is_in_the_lineage_and_not_in_what_decides_a_retrain():
    from lorafleet.lineage import Inputs, Lineage

    assert "context_sha256" in Lineage.model_fields and "context_sha256" not in Inputs.model_fields
