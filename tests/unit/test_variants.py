"""ONNX variants (export.variants: the export itself, then int4 built from it): what a config may ask for, how the gate
holds a variant to its own thresholds, and how the results carry them (domain_summary.json of old runs included)."""
import json

import pytest

from lorafleet.config import ConfigError, ExportConfig, GateConfig, VariantGate, load_domain

INT4 = {"export": {"variants": ["fp32", "int4"]}}
GPU_FINISH = {"eval": {"resources": {"cpu": 1, "gpu": 0.5}}}


def _load(domain_copy, *layers):
    from lorafleet.config import merge_overrides

    return load_domain(domain_copy("contracts"), merge_overrides(*layers))


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
