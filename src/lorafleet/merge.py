"""Merge the winning LoRA adapter into its base: base reloaded in 16-bit (never into 4-bit weights),
adapter applied, ``merge_and_unload``, saved as safetensors with the tokenizer and a snapshot. The adapter comes
back from the run's storage: safetensors only."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lorafleet.base_model import resolve_base_model
from lorafleet.lineage import sha256_file
from lorafleet.safe_weights import require_safetensors

log = logging.getLogger(__name__)

MARKER = "lorafleet_merge.json"


def merge_16bit(base_model: str, adapter_dir: str | Path, out_dir: str | Path,
                snapshot: dict[str, Any] | None = None, trust_remote_code: bool = False) -> Path:
    """Write the merged model (fp16) to out_dir; reuse it when out_dir already holds this adapter's merge.
    ``snapshot``: what else identifies the merge (e.g. the winner's hyperparameters), kept in its marker;
    ``trust_remote_code``: the domain's, for the base's own modelling code."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, adapter_dir = Path(out_dir), require_safetensors(adapter_dir)
    adapter_sha = sha256_file(adapter_dir / "adapter_model.safetensors")
    record = {"base_model": base_model, "adapter_sha256": adapter_sha, "dtype": "float16", **(snapshot or {})}
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == record:
        log.info("merge: %s already holds this merge; skipping", out_dir)
        return out_dir
    base = AutoModelForCausalLM.from_pretrained(resolve_base_model(base_model), dtype=torch.float16,
                                                trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code).save_pretrained(out_dir)
    marker.write_text(json.dumps(record, indent=2))
    return out_dir
