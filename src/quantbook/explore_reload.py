"""Save a PT2E program and a torchao model, then reload both in a fresh process.

Chapter 06's check that quantized models survive a save: :func:`save_for_reload` writes
the exported PT2E program (``torch.export.save``), the torchao model's state dict
(``torch.save``) and the outputs to match; :func:`reload_and_compare`, run in a new Python
process, loads them back and reports how far the outputs moved and what a plain
``torch.load(weights_only=True)`` refuses before torchao is imported.
"""

from __future__ import annotations

import pathlib

import torch
from torch import nn


def save_for_reload(workdir: pathlib.Path, program, torchao_model: nn.Module,
                    x: torch.Tensor, expected: dict[str, torch.Tensor]) -> dict[str, int]:
    """Write a PT2E program, a torchao state dict and the outputs to compare; bytes of each.

    Each graph node's ``stack_trace`` (the source file paths of this machine) is dropped from
    ``program`` before it is saved, so that the file's size does not depend on where the
    repository lies.
    """
    workdir = pathlib.Path(workdir)
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)
    torch.export.save(program, workdir / "pt2e.pt2")
    torch.save(torchao_model.state_dict(), workdir / "torchao.pt")
    torch.save({"x": x, **expected}, workdir / "expected.pt")
    return {name: (workdir / name).stat().st_size for name in ("pt2e.pt2", "torchao.pt")}


def reload_and_compare(workdir: str) -> dict[str, object]:
    """In a fresh process: reload what :func:`save_for_reload` wrote and compare outputs.

    Returns:
        ``max_diff_pt2e``, ``max_diff_torchao`` (largest absolute difference to the saved
        outputs), ``plain_load_error`` (what ``torch.load(weights_only=True)`` raises before
        torchao is imported, ``""`` if nothing) and ``pt2e_type`` (what the program runs as).
    """
    from quantbook import gpt

    workdir = pathlib.Path(workdir)
    try:  # torchao's tensor classes are not yet known to the safe unpickler
        torch.load(workdir / "torchao.pt", weights_only=True)
        plain_error = ""
    except Exception as error:  # an UnpicklingError naming the class it refused
        plain_error = type(error).__name__
    import torchao.quantization  # noqa: F401  (registers its classes as safe to load)

    expected = torch.load(workdir / "expected.pt", weights_only=True)
    program = torch.export.load(workdir / "pt2e.pt2").module()
    model = gpt.load_gpt()[0]
    model.load_state_dict(torch.load(workdir / "torchao.pt", weights_only=True), assign=True)
    with torch.no_grad():
        outputs = {"pt2e": program(expected["x"])[0], "torchao": model(expected["x"])[0]}
    return {"max_diff_pt2e": float((outputs["pt2e"] - expected["pt2e"]).abs().max()),
            "max_diff_torchao": float((outputs["torchao"] - expected["torchao"]).abs().max()),
            "plain_load_error": plain_error, "pt2e_type": type(program).__name__,
            "weight_type": type(model.lm_head.weight).__name__}
