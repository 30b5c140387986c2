"""ONNX variants (export.variants: the export itself, then int4 built from it): what a config may ask for, how the gate
holds a variant to its own thresholds, and how the results carry them (domain_summary.json of old runs included)."""
import json

import pytest

from lorafleet.config import ConfigError, ExportConfig, GateConfig, VariantGate, load_domain

INT4 = {"export": {"variants": ["fp32", "int4"]}}
GPU_FINISH = {"eval": {"resources": {"cpu": 1, "gpu": 0.5}}}


def _load(domain_copy, *layers):
    """contracts.yaml without its variants (the bundled domains have an int4 one and its gate), then ``layers``."""
    from lorafleet.config import merge_overrides
    from tests.conftest import rewrite_yaml

    def plain(raw):
        del raw["export"]["variants"], raw["export"]["int4_block_size"], raw["gate"]["variants"]

    return load_domain(rewrite_yaml(domain_copy("contracts"), plain), merge_overrides(*layers))


def test_the_bundled_domains_publish_an_int4_variant_held_to_its_drops():
    from tests.conftest import DOMAINS_DIR

    for path in sorted(DOMAINS_DIR.glob("*.yaml")):
        cfg = load_domain(path)
        block = 16 if cfg.name == "brand_captions" else 32  # its long Thai answers lose their JSON in blocks of 32
        assert (cfg.export.variants, cfg.export.int4_block_size) == (["fp32", "int4"], block), path
        assert cfg.gate.variants == {"int4": VariantGate(max_drop={"schema_pass_rate": 0.1, "score": 5})}, path


# ---- config ------------------------------------------------------------------------------------------

def test_variants_default_to_the_export_itself():
    assert ExportConfig().variants == ["fp32"]
    assert ExportConfig(dtype="fp16").variants == ["fp16"]
    assert ExportConfig(onnx=False).variants == ["fp32"]  # read by nothing, but no contradiction either


@pytest.mark.parametrize("overrides, variants, block", [
    (INT4, ["fp32", "int4"], 32),
    ({"export": {"variants": ["fp32", "int4"], "int4_block_size": 128}}, ["fp32", "int4"], 128),
    ({"export": {"variants": ["fp32", "int4"], "int4_block_size": 16}}, ["fp32", "int4"], 16),
    # int4 from an fp16 export: MatMulNBits runs fp16 on the CPU (tests/integration/test_onnx_variants.py)
    ({"export": {"dtype": "fp16", "variants": ["fp16", "int4"]}, **GPU_FINISH}, ["fp16", "int4"], 32),
])
def test_buildable_variants_load(domain_copy, overrides, variants, block):
    cfg = _load(domain_copy, overrides)
    assert (cfg.export.variants, cfg.export.int4_block_size) == (variants, block)


@pytest.mark.parametrize("export, problem", [
    ({"variants": ["fp32", "fp16"]}, r"export: Value error, variants: fp16 beside the fp32 export is not built: only one "
     r"precision is exported \(export.dtype\); further variants are built from it: int4"),
    ({"variants": ["int4"]}, r"export: Value error, variants: the first is the export itself, in export.dtype \(fp32\), "
     r"not int4; e.g. variants: \[fp32, int4\]"),
    ({"dtype": "fp16", "variants": ["fp32", "int4"]},
     r"export: Value error, variants: the first is the export itself, in export.dtype \(fp16\), not fp32; e.g. "
     r"variants: \[fp16, int4\]"),
    ({"variants": ["fp32", "int4", "int4"]}, r"export: Value error, variants: fp32, int4, int4 names a variant twice"),
    ({"variants": []}, r"export: Value error, variants: needs at least the export itself, \[fp32\]"),
    ({"variants": ["fp32", "int8"]}, r"export.variants.1: Input should be 'fp32', 'fp16' or 'int4'"),
    ({"variants": ["fp32", "int4"], "int4_block_size": 48},
     r"export.int4_block_size: Value error, must be a power of two, 16 or more \(MatMulNBits' blocks\), got 48"),
    ({"variants": ["fp32", "int4"], "int4_block_size": 8}, r"export.int4_block_size: .*got 8"),
    ({"int4_block_size": 64}, r"export: Value error, int4_block_size: read only for an int4 variant"),
])
def test_variants_that_cannot_be_built_are_refused_naming_the_field(domain_copy, export, problem):
    with pytest.raises(ConfigError, match=rf"contracts.yaml: (.*; )?{problem}"):
        _load(domain_copy, GPU_FINISH, {"export": export})


def test_a_variant_gate_loads_with_drops_and_minimums(domain_copy):
    gate = {"gate": {"variants": {"int4": {"max_drop": {"schema_pass_rate": 0.02, "score": 5, "eval_loss": 0.1},
                                           "min": {"json_valid_rate": 0.8}}}}}
    cfg = _load(domain_copy, INT4, gate)
    assert cfg.gate.variants == {"int4": VariantGate(max_drop={"schema_pass_rate": 0.02, "score": 5, "eval_loss": 0.1},
                                                     min={"json_valid_rate": 0.8})}


@pytest.mark.parametrize("overrides, problem", [
    ({"gate": {"variants": {"int4": {"max_drop": {"schema_pass_rate": 0.02}}}}},
     r"gate.variants.int4: int4 is not built: export.variants is \[fp32\]; add it there or drop gate.variants.int4"),
    ({**INT4, "gate": {"variants": {"fp32": {"max_drop": {"score": 1}}}}},
     r"gate.variants.fp32: fp32 is the primary ONNX export \(export.variants' first\)"),
    ({**INT4, "gate": {"variants": {"int8": {"max_drop": {"score": 1}}}}},
     r"gate.variants.int8.\[key\]: Input should be 'fp32', 'fp16' or 'int4'"),
    ({**INT4, "gate": {"variants": {"int4": {"max_drop": {"bogus": 0.02}}}}},
     r"gate.variants.int4: Value error, unknown metric\(s\) bogus; known: json_valid_rate"),
    ({**INT4, "gate": {"variants": {"int4": {"min": {"f1": 0.5}}}}}, r"gate.variants.int4: .*unknown metric\(s\) f1"),
    ({**INT4, "gate": {"variants": {"int4": {"max_drop": {"grounding": 0.02}}}}},
     r"gate.variants.int4.max_drop: grounding is never measured: eval.evidence_fields is empty"),
    ({**INT4, "gate": {"variants": {"int4": {"max_drop": {"score": -1}}}}},
     r"gate.variants.int4.max_drop: Value error, score: a drop is 0 or more"),
    ({**INT4, "gate": {"variants": {"int4": {}}}}, r"gate.variants.int4: Value error, no thresholds"),
    ({**INT4, "gate": {"variants": {"int4": {"max_dorp": {"score": 1}}}}},
     r"gate.variants.int4.max_dorp: Extra inputs are not permitted"),
])
def test_variant_gates_that_would_judge_nothing_are_refused_naming_the_field(domain_copy, overrides, problem):
    with pytest.raises(ConfigError, match=rf"contracts.yaml: (.*; )?{problem}"):
        _load(domain_copy, overrides)


def test_export_onnx_false_still_loads_a_config_with_variants_and_their_gate(domain_copy):
    """``--set export.onnx=false`` (quick runs, tests, the sweep benchmark) on a config with an int4 variant: nothing is
    exported, so no variant is built and its gate is not judged (gate.decide is given no variants)."""
    cfg = _load(domain_copy, INT4, {"gate": {"variants": {"int4": {"max_drop": {"score": 1}}}}}, {"export": {"onnx": False}})
    assert (cfg.export.onnx, cfg.export.variants) == (False, ["fp32", "int4"])


def test_gate_config_defaults_to_no_variant_thresholds():
    assert GateConfig().variants == {}
    with pytest.raises(ValueError, match="no thresholds"):
        VariantGate()


# ---- gate --------------------------------------------------------------------------------------------

def _evaluation(n=32, **values):
    from lorafleet.metrics import Evaluation, Metric

    return Evaluation(n=n, metrics={k: Metric(value=v, ci=(v - 0.05, v + 0.05)) for k, v in values.items()})


def _passing_test():
    from lorafleet.metrics import Delta, SplitEvaluation

    tuned = _evaluation(schema_pass_rate=1.0, score=60.0)
    return SplitEvaluation(tuned=tuned, base=_evaluation(schema_pass_rate=0.0, score=0.0), delta=Delta(), onnx=tuned)


INT4_GATE = GateConfig(min={"schema_pass_rate": 0.6},
                       variants={"int4": VariantGate(max_drop={"schema_pass_rate": 0.02, "score": 5, "eval_loss": 0.1},
                                                     min={"json_valid_rate": 0.8})})


def test_a_variant_within_its_drops_and_above_its_minimums_passes():
    from lorafleet.gate import decide

    fp32 = _evaluation(schema_pass_rate=1.0, score=60.0, eval_loss=0.50, json_valid_rate=1.0)
    int4 = _evaluation(schema_pass_rate=0.98, score=55.0, eval_loss=0.60, json_valid_rate=0.8)  # every drop at its limit
    verdict = decide(INT4_GATE, _passing_test(), None, variants={"fp32": fp32, "int4": int4})
    assert verdict.passed, verdict
    variant = [c for c in verdict.checks if c.kind == "variant"]
    assert [c.name for c in variant] == ["int4 schema_pass_rate at most 0.02 below fp32", "int4 score at most 5 below fp32",
                                         "int4 eval_loss at most 0.1 above fp32", "int4 json_valid_rate >= 0.8"]
    assert [c.value for c in variant] == [pytest.approx(0.02), 5.0, pytest.approx(0.1), 0.8]
    assert variant[0].detail == "int4 0.980 vs fp32 1.000 on the test split"
    assert variant[3].detail == "int4 0.800 on the test split"


def test_a_variant_past_a_threshold_fails_the_gate_naming_the_variant():
    from lorafleet.gate import decide

    fp32 = _evaluation(schema_pass_rate=1.0, score=60.0, eval_loss=0.50, json_valid_rate=1.0)
    int4 = _evaluation(schema_pass_rate=0.9375, score=56.0, eval_loss=0.45, json_valid_rate=0.75)
    verdict = decide(INT4_GATE, _passing_test(), None, variants={"fp32": fp32, "int4": int4})
    assert not verdict.passed
    assert verdict.failed == ["int4 schema_pass_rate at most 0.02 below fp32", "int4 json_valid_rate >= 0.8"]
    # a variant better than the export (lower loss) is no drop at all
    loss = next(c for c in verdict.checks if c.name.startswith("int4 eval_loss"))
    assert loss.passed and loss.value == pytest.approx(-0.05)


def test_a_gated_variant_that_was_not_evaluated_fails_its_checks():
    from lorafleet.gate import decide

    fp32 = _evaluation(schema_pass_rate=1.0, score=60.0, eval_loss=0.5, json_valid_rate=1.0)
    verdict = decide(INT4_GATE, _passing_test(), None, variants={"fp32": fp32})
    assert [c.detail for c in verdict.checks if c.kind == "variant"] == [
        "schema_pass_rate not measured on int4", "score not measured on int4", "eval_loss not measured on int4",
        "int4 not evaluated"]
    assert not verdict.passed
    # no ONNX model at all (export.onnx: false): the variant thresholds are not judged
    assert decide(INT4_GATE, _passing_test(), None, None).passed
    assert all(c.kind != "variant" for c in decide(INT4_GATE, _passing_test()).checks)


def test_the_drop_is_measured_from_the_first_variant_whatever_its_precision():
    from lorafleet.gate import decide

    fp16 = _evaluation(schema_pass_rate=0.9, score=50.0, eval_loss=0.5, json_valid_rate=1.0)
    int4 = _evaluation(schema_pass_rate=0.9, score=50.0, eval_loss=0.5, json_valid_rate=1.0)
    verdict = decide(INT4_GATE, _passing_test(), None, variants={"fp16": fp16, "int4": int4})
    assert verdict.passed and "int4 score at most 5 below fp16" in [c.name for c in verdict.checks]


# ---- results and reports -------------------------------------------------------------------------------

def test_a_domain_result_with_variants_round_trips_through_its_json():
    from lorafleet.results import DomainResult, RunSummary
    from tests.report_sample import sample_report

    result = sample_report().result
    assert list(result.variants) == ["fp32", "int4"]
    again = DomainResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result and again.variants["int4"].speed.tokens_per_s == 455.0
    summary = RunSummary.of("r1", "/tmp/store", 1.0, {result.name: result})
    assert RunSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary


def test_a_domain_summary_written_before_variants_still_loads():
    """domain_summary.json of earlier runs (resumed, unchanged domains read them back) has no variants and no
    onnx_variants phase."""
    from lorafleet.results import DomainResult
    from tests.report_sample import sample_report

    old = sample_report().result.to_json()
    del old["variants"]
    del old["timings"]["onnx_variants"]
    loaded = DomainResult.from_json(json.loads(json.dumps(old)))
    assert loaded.variants == {} and loaded.timings.onnx_variants is None
    assert loaded.test == sample_report().result.test and loaded.drift.merged_vs_onnx.greedy_match_rate == 1.0


def test_reports_and_the_model_card_show_each_variant_with_its_size_speed_accuracy_parity_and_gate():
    from lorafleet.report import render_html, render_markdown, result_markdown
    from tests.report_sample import sample_report

    report = sample_report()
    int4 = report.result.variants["int4"]
    md = render_markdown(report)
    assert "## ONNX variants" in md and "64 new tokens after a 97-token prompt" in md and "1 thread," in md
    row = next(line for line in md.splitlines() if line.startswith("| int4 |"))
    score, schema = int4.evaluation.metrics["score"], int4.evaluation.metrics["schema_pass_rate"]
    assert row.startswith("| int4 | onnx-int4 | int4 MatMul weights (block 32) over fp32 | 4.85 | 455.0 | "
                          f"{score.value:.1f} [{score.ci[0]:.1f}, {score.ci[1]:.1f}] | "
                          f"{schema.value:.3f} [{schema.ci[0]:.3f}, {schema.ci[1]:.3f}] | 0.910 | 0.840 | ")
    assert row.endswith("| FAIL: int4 schema_pass_rate at most 0.02 below fp32 |")
    assert next(line for line in md.splitlines() if line.startswith("| fp32 |")).endswith("| 1.000 | 3.2e-05 | — |")
    assert "int4 schema_pass_rate at most 0.02 below fp32" in md.splitlines()[0]  # the verdict names the variant
    assert "| int4 score at most 5 below fp32 | variant | 4.167 | 5.000 | pass | int4 73.750 vs fp32 77.917 " in md
    assert "## ONNX variants" in result_markdown(report.result)  # the model card's numbers
    page = render_html(report)
    table = page[page.index('<table class="variants">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr") == 3 and '<span class="fail">FAIL: int4 schema_pass_rate' in table
