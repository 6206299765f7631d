"""Tensors and their metadata in one safetensors file, written atomically.

The GPT's checkpoint (:func:`quantbook.gpt.load_gpt`) and any other committed weights go
through these two functions: a write lands in a temporary file first and replaces the target
only when complete, so a failed write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import torch


def save_tensors(tensors: dict[str, torch.Tensor], path: str | pathlib.Path,
                 metadata: dict[str, str]) -> pathlib.Path:
    """Write ``tensors`` (made contiguous, on the CPU) and string ``metadata`` to ``path``."""
    from safetensors.torch import save_file

    bad = sorted(k for k, v in metadata.items() if not isinstance(v, str))
    if bad:
        raise TypeError(f"metadata values must be strings (safetensors stores text): {bad} are "
                        "not; encode them with json.dumps")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_tensors(path: str | pathlib.Path, fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(tensors, metadata)`` from a safetensors file; ``fix`` says how to make one."""
    from safetensors import safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: {fix}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata
