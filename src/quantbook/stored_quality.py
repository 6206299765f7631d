"""MiniLM quality measured once, stored, and re-checked cheaply in the chapters.

Run eagerly on a CPU without int8 dot-product instructions (VNNI), torchao's int8 matmul,
``torch._int_mm``, falls back to a plain loop: evaluating MiniLM on the 50 Lee articles then
takes about 100 s on one core, against 6 s in float. Chapter 05's calibration grid, 12 eager
static models, takes 80 s to evaluate. Chapters 04 and 05 therefore quote the Lee Pearson and
embedding cosines that ``make stored-quality`` measured (the full
:func:`quantbook.evaluate.evaluate_minilm`), and check in the notebook that the model they build
computes what the stored one did: its embeddings of the first :data:`CHECK_ARTICLES` Lee articles
must match the stored ones (:func:`check`).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from quantbook.data import lee_documents
from quantbook.evaluate import evaluate_minilm
from quantbook.records import write_json_atomic

RESULTS = pathlib.Path(__file__).parent / "results" / "stored_quality.json"
CHECK_ARTICLES = 2  # articles re-embedded by check(): seconds even on torchao's slow path
# the same model on another CPU (other float kernels, an int8 code that rounds the other way)
# stays far above this; a different model (another config, other calibration) falls below it
MIN_CHECK_COSINE = 0.999


@dataclass(frozen=True)
class StoredQuality:
    """One MiniLM model's quality on the Lee corpus, and its embeddings of the check articles.

    Attributes:
        method: the label the chapter shows (``"torchao int8 dynamic"``).
        lee_pearson: Pearson correlation with the human ratings over the 50 articles.
        cosine_mean: mean cosine of its embeddings to the float32 ones; ``cosine_min`` the worst.
        check_embeddings: its embeddings of the first :data:`CHECK_ARTICLES` Lee articles.
    """

    method: str
    lee_pearson: float
    cosine_mean: float
    cosine_min: float
    check_embeddings: tuple[tuple[float, ...], ...]

    def quality(self) -> tuple[float, dict[str, float]]:
        """``(lee_pearson, {"cosine_mean": ..., "cosine_min": ...})``, as a sweep records it."""
        return self.lee_pearson, {"cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min}


def _check_embeddings(model: nn.Module, tokenizer) -> torch.Tensor:
    from quantbook.minilm import embed

    return embed(model, tokenizer, lee_documents()[:CHECK_ARTICLES])  # (CHECK_ARTICLES, 384)


def measure_quality(model: nn.Module, tokenizer, reference: torch.Tensor,
                    method: str) -> StoredQuality:
    """Evaluate ``model`` on all 50 articles (slow on torchao's eager path) for storing.

    Args:
        model: a MiniLM encoder, float or quantized.
        tokenizer: its tokenizer.
        reference: the float32 model's (50, 384) embeddings, for the cosines.
        method: the label to store it under.
    """
    result = evaluate_minilm(model, tokenizer, reference)
    check = _check_embeddings(model, tokenizer)
    return StoredQuality(
        method=method, lee_pearson=float(result["pearson"]),
        cosine_mean=float(result["cosine_mean"]), cosine_min=float(result["cosine_min"]),
        check_embeddings=tuple(tuple(round(float(v), 7) for v in row) for row in check))


def save(path: str | pathlib.Path, qualities: list[StoredQuality], **meta) -> None:
    """Write ``qualities`` (and ``meta``, e.g. the machine) as JSON, atomically."""
    write_json_atomic({**meta, "qualities": [asdict(q) for q in qualities]}, path)


def load(path: str | pathlib.Path = RESULTS) -> dict[str, StoredQuality]:
    """The stored qualities by method label.

    Raises:
        FileNotFoundError: with the command that writes the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no stored MiniLM qualities at {path}: run `make stored-quality`")
    rows = json.loads(path.read_text())["qualities"]
    return {row["method"]: StoredQuality(
        method=row["method"], lee_pearson=row["lee_pearson"], cosine_mean=row["cosine_mean"],
        cosine_min=row["cosine_min"],
        check_embeddings=tuple(tuple(r) for r in row["check_embeddings"])) for row in rows}


def check(model: nn.Module, tokenizer, stored: StoredQuality,
          min_cosine: float = MIN_CHECK_COSINE) -> float:
    """Re-embed the check articles with ``model`` and compare them with the stored embeddings.

    Args:
        model: the model the chapter built, meant to be the stored one.
        tokenizer: its tokenizer.
        stored: the stored quality of that model.
        min_cosine: the lowest cosine to the stored embeddings that counts as the same model.

    Returns:
        The smallest cosine between a fresh embedding and its stored counterpart.

    Raises:
        ValueError: when the model computes something else than the stored one.
    """
    if not isinstance(stored, StoredQuality):
        raise TypeError(f"stored is a {type(stored).__name__}: pass one StoredQuality from "
                        "stored_quality.load()[method]")
    if not 0 < min_cosine <= 1:
        raise ValueError(f"min_cosine={min_cosine!r} is not a cosine in (0, 1]: use e.g. 0.999")
    fresh = _check_embeddings(model, tokenizer)
    kept = torch.tensor(stored.check_embeddings, dtype=fresh.dtype)
    if kept.shape != fresh.shape:
        raise ValueError(f"stored.check_embeddings has shape {tuple(kept.shape)}, the model "
                         f"gives {tuple(fresh.shape)}: rerun `make stored-quality`")
    cosine = float(torch.nn.functional.cosine_similarity(fresh, kept, dim=1).min())
    if cosine < min_cosine:
        raise ValueError(f"the model computes something else than the stored {stored.method!r}"
                         f" (cosine {cosine:.5f} < min_cosine={min_cosine}): it was built "
                         "differently, or the stored file is out of date (`make stored-quality`)")
    return cosine
