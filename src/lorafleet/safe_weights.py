"""Weights that come back from a run's storage (the winner's adapter, the merged model) or from a fetched folder are
loaded from safetensors only: a pickle file (PyTorch's .bin and .pt, and the like) runs code when it is loaded, so
a folder holding one is refused, not loaded."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeWeights(ValueError):
    """A folder of weights that holds a pickle file, or no safetensors at all; the message names the folder."""


def pickle_files(names: Iterable[str]) -> list[str]:
    """The names (file paths) among ``names`` that are pickle files by their suffix."""
    return sorted(name for name in names if name.lower().endswith(PICKLE_SUFFIXES))


def require_safetensors(folder: str | Path) -> Path:
    """``folder``, after checking that it holds safetensors weights and no pickle file."""
    folder = Path(folder)
    found = pickle_files(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if found:
        raise UnsafeWeights(f"{folder}: holds pickle files ({', '.join(found)}), which run code when loaded; "
                            "lorafleet loads weights from storage as safetensors only")
    if not any(folder.glob("*.safetensors")):
        raise UnsafeWeights(f"{folder}: no .safetensors weights in it")
    return folder
