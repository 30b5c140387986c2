"""lorafleet predict's consumer side without a model: records asked as training asked them, the chat template rendered as
transformers renders it, input errors named by file and line, a fetched folder checked against the manifest, answers
validated as evaluation validates them, the output written whole, and no training library imported."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet import data, predict, prompt
from lorafleet.config import load_domain
from lorafleet.contract import ContextSpec, ModelContract
from lorafleet.prompt import MessageFormat
from tests.conftest import DOMAINS_DIR

DOMAINS = sorted(p.stem for p in DOMAINS_DIR.glob("*.yaml"))


def _contract(cfg) -> ModelContract:
    spec = ContextSpec(file="context.json", key=cfg.context.key, template=cfg.context.template,
                       grounding_fields=cfg.context.grounding_fields, sha256="c", entities=1) if cfg.context else None
    return ModelContract(domain=cfg.name, kind="onnx", dtype="float32", description="", base_model="tiny", run_id="r",
                         dataset_version="d", lorafleet_version="0", inputs=[], outputs=[], kv_cache=None,
                         system_prompt=cfg.system_prompt, special_tokens={}, prompt_sha256="p",
                         message_format=MessageFormat.of(cfg.data.format), generation={"max_new_tokens": 4},
                         context=spec, files=[])


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_record_of_the_domains_format_is_asked_as_training_asked_it(domain):
    cfg = load_domain(DOMAINS_DIR / f"{domain}.yaml")
    contract, context = _contract(cfg), data.context_of(cfg)
    lines = Path(cfg.data_path).read_text(encoding="utf-8").splitlines()[:5]
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        trained = data.to_example(record, cfg, number).prompt
        request = predict.request_of(record, contract, number, context)  # the answer turn in the record is left out
        assert prompt.with_system_prompt(request.messages, cfg.system_prompt, request.context) == trained
        assert request.id == f"line-{number}"


def test_an_id_and_input_record_is_the_user_message_of_the_domains_format():
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml")
    request = predict.request_of({"id": 7, "input": "Clause text."}, _contract(cfg), 1)
    assert (request.id, request.messages) == (7, [{"role": "user", "content": "Clause text."}])
    alpaca = load_domain(DOMAINS_DIR / "story_summary.yaml")
    request = predict.request_of({"id": "a", "instruction": "Tóm tắt.", "input": "Chuyện."}, _contract(alpaca))
    assert request.messages == [{"role": "user", "content": "Tóm tắt.\n\nChuyện."}]


TEMPLATE_USING_EVERYTHING = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
    "{% if loop.index > 5 %}{% break %}{% endif %}\n  <{{ m.role }}>{{ m.content | tojson }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def test_the_chat_template_renders_as_transformers_renders_it(tmp_path):
    """Special tokens as variables, jinja's trim and lstrip of blocks, loop controls, and transformers' tojson (no
    HTML escaping, no ASCII escaping)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "system", "content": "Trả lời <JSON> & \"quotes\""}, {"role": "user", "content": "x\ny"}]
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    expected = render_jinja_template([messages], chat_template=TEMPLATE_USING_EVERYTHING, add_generation_prompt=True,
                                     **special)[0][0]
    assert prompt.render_chat(TEMPLATE_USING_EVERYTHING, messages, special) == expected
    # the newline after a block tag trimmed; JSON neither HTML- nor ASCII-escaped
    assert expected.startswith('<s>  <system>"Trả lời <JSON> & \\"quotes\\""</s>\n  <user>"x\\ny"</s>')
    with pytest.raises(Exception, match="no tools"):
        prompt.render_chat(TEMPLATE_USING_EVERYTHING, [{"role": "tool", "content": ""}], special)


@pytest.mark.parametrize("lines, expected", [
    (['{"id": 1, "input": "a"}', "not json"], r"in\.jsonl:2: Expecting value"),
    (['{"id": 1, "input": "a"}', "", '{"id": 2}'], r"in\.jsonl:3: missing field 'input'"),
    (['[1, 2]'], r"in\.jsonl:1: expected a JSON object, got list"),
    (['{"id": 1, "input": 5}'], r"in\.jsonl:1: input must be a string, got int"),
    ([""], r"in\.jsonl: no records"),
])
def test_a_malformed_input_line_is_named_by_file_and_line(tmp_path, lines, expected):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(predict.PredictError, match=expected):
        predict.read_requests(path, _contract(load_domain(DOMAINS_DIR / "contracts.yaml")))


def test_a_fetched_folder_that_changed_is_named_file_by_file(tmp_path):
    from lorafleet.lineage import sha256_file

    (tmp_path / "onnx").mkdir()
    for name, text in (("a.json", "{}"), ("onnx/model.onnx", "graph"), ("b.txt", "b")):
        (tmp_path / name).write_text(text)
    wanted = {n: {"bytes": (tmp_path / n).stat().st_size, "sha256": sha256_file(tmp_path / n)}
              for n in ("a.json", "onnx/model.onnx", "b.txt")}
    (tmp_path / "lorafleet_source.json").write_text("{}")  # the fetch's own record
    assert predict.changed_files(tmp_path, wanted) == []
    (tmp_path / "onnx" / "model.onnx").write_text("grapH")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "extra.py").write_text("")
    assert predict.changed_files(tmp_path, wanted) == [
        "b.txt missing", "onnx/model.onnx changed (sha256 differs)", "extra.py not in the manifest"]


class _Model:
    """Stands in for OnnxModel: fixed answers, the contracts domain's schema."""

    def __init__(self, folder, texts):
        self.folder, self.texts = folder, iter(texts)
        self.contract = _contract(load_domain(DOMAINS_DIR / "contracts.yaml"))

    def answer(self, turns, context=None):
        return next(self.texts)


def test_answers_are_validated_as_evaluation_validates_them_and_written_whole(tmp_path):
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml")
    (tmp_path / "output_schema.json").write_text(Path(cfg.schema_path).read_text())
    good = json.loads(json.loads(Path(cfg.data_path).read_text().splitlines()[0])["messages"][-1]["content"])
    model = _Model(tmp_path, [json.dumps(good), " " + json.dumps({**good, "amount": "lots"}), "{not json"])
    requests = [predict.Request(id=i, line=i, messages=[{"role": "user", "content": "x"}]) for i in range(3)]
    seen = []
    answers = predict.answer_all(model, requests, progress=lambda done, total, s: seen.append((done, total)))
    assert [a.valid for a in answers] == [True, False, False]
    assert answers[0].output == good and answers[0].errors == []
    assert len(answers[1].errors) == 1 and answers[1].errors[0].startswith("amount: 'lots' is not of type")
    assert answers[2].errors == ["not JSON"] and answers[2].output is None
    assert seen[-1] == (3, 3)  # the last progress line counts every record

    out = tmp_path / "out" / "answers.jsonl"
    predict.write_answers(out, answers)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and rows[2]["text"] == "{not json"
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.jsonl"]  # no staging file left


def test_predict_imports_no_training_library():
    """The consumer's modules load without torch, Ray or transformers (they are absent from the consumer install;
    tests/integration/test_predict_consumer.py answers from a fresh venv that has only it)."""
    code = ("import sys, lorafleet.cli, lorafleet.predict, lorafleet.contract, lorafleet.publish; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'ray', 'transformers', 'optimum', 'datasets', 'peft', 'trl', 'matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
