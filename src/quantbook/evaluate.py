"""How good are sentence embeddings? Agreement with people, and agreement with the float model.

Two yardsticks for a quantized encoder:

* :func:`lee_correlation`: the cosine similarity of each pair of the 50 Lee articles against
  the mean human rating of that pair (1,225 pairs), as Pearson and Spearman correlations. This
  is the task-level quality a reader cares about.
* :func:`embedding_cosine`: how far each quantized embedding has turned away from its float
  counterpart. It is more sensitive: it moves before the correlations do.

Pearson and Spearman are written out here (a few lines each) rather than imported from scipy,
and the tests check them against ``scipy.stats``.
"""

from __future__ import annotations

import numpy as np
import torch

from quantbook.data import N_RATED, lee_documents, lee_pair_ratings


def _as_matrix(name: str, values) -> np.ndarray:
    array = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else values
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} has shape {array.shape}: expected a 2-D (texts, dim) array of embeddings"
        )
    return array


def _as_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size or x.size < 2:
        raise ValueError(
            f"x has {x.size} values and y has {y.size}: expected two sequences of the same "
            "length, at least 2"
        )
    return x, y


def pearson(x, y) -> float:
    """Pearson correlation: the cosine of the two centred vectors.

    Returns ``nan`` when either input is constant (the correlation is undefined there).
    """
    x, y = _as_pair(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denominator) if denominator > 0 else float("nan")


def average_ranks(x) -> np.ndarray:
    """Rank values from 1 to n, giving tied values the mean of the ranks they span.

    Example: ``average_ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last copy of each distinct value
    return (last - (counts - 1) / 2.0)[inverse]


def spearman(x, y) -> float:
    """Spearman rank correlation: the Pearson correlation of the average ranks (ties averaged)."""
    x, y = _as_pair(x, y)
    return pearson(average_ranks(x), average_ranks(y))


def cosine_matrix(embeddings) -> np.ndarray:
    """Return the (N, N) cosine similarities between the rows of an (N, dim) array, in float64."""
    e = _as_matrix("embeddings", embeddings)
    norms = np.linalg.norm(e, axis=1, keepdims=True)  # (N, 1)
    if np.any(norms == 0):
        raise ValueError("embeddings contain an all-zero row: its cosine similarity is undefined")
    unit = e / norms
    return unit @ unit.T  # (N, N)


def lee_correlation(embeddings) -> dict:
    """Correlate the cosine similarities of the 50 Lee articles with the human ratings.

    Args:
        embeddings: (50, dim) tensor or array, row k embedding ``lee_documents()[k]``. Rows need
            not be normalised.

    Returns:
        ``{"pearson": float, "spearman": float, "n_pairs": 1225}`` over the pairs ``i < j``.
    """
    e = _as_matrix("embeddings", embeddings)
    if e.shape[0] != N_RATED:
        raise ValueError(
            f"embeddings has {e.shape[0]} rows: expected {N_RATED}, one per Lee article in the "
            "order of lee_documents()"
        )
    i, j, rating = lee_pair_ratings()
    similarity = cosine_matrix(e)[i, j]  # (1225,)
    return {
        "pearson": pearson(similarity, rating),
        "spearman": spearman(similarity, rating),
        "n_pairs": int(rating.size),
    }


def embedding_cosine(reference, other) -> dict:
    """Row-wise cosine similarity between reference (float) and other (e.g. quantized) embeddings.

    Args:
        reference: (N, dim) embeddings of the float model.
        other: (N, dim) embeddings of the same texts from another model.

    Returns:
        ``{"mean": float, "min": float}`` over the N rows; 1.0 means identical directions.
    """
    a = _as_matrix("reference", reference)
    b = _as_matrix("other", other)
    if a.shape != b.shape:
        raise ValueError(
            f"reference has shape {a.shape} but other has shape {b.shape}: embed the same "
            "texts with both models"
        )
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (N,)
    if np.any(norms == 0):
        raise ValueError("an embedding row is all zeros: its cosine similarity is undefined")
    cosine = np.einsum("nd,nd->n", a, b) / norms  # (N,)
    return {"mean": float(cosine.mean()), "min": float(cosine.min())}


def evaluate_minilm(model, tokenizer, reference=None, batch_size: int = 16) -> dict:
    """Embed the 50 Lee articles and score them against the human ratings.

    Args:
        model: a MiniLM encoder from :func:`quantbook.minilm.load_minilm`, float or quantized.
        tokenizer: its tokenizer.
        reference: optional (50, 384) float embeddings; when given, the result also holds their
            row-wise cosine to this model's embeddings.
        batch_size: articles per forward pass.

    Returns:
        ``{"pearson", "spearman", "n_pairs", "embeddings"}``, plus ``"cosine_mean"`` and
        ``"cosine_min"`` when ``reference`` is given. ``embeddings`` is a (50, 384) tensor.
    """
    from quantbook.minilm import embed

    embeddings = embed(model, tokenizer, lee_documents(), batch_size=batch_size)
    result = {**lee_correlation(embeddings), "embeddings": embeddings}
    if reference is not None:
        cosine = embedding_cosine(reference, embeddings)
        result.update(cosine_mean=cosine["mean"], cosine_min=cosine["min"])
    return result


def pearson_interval(embeddings, other=None, *, n_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Bootstrap interval of the Lee Pearson, or of a difference of two models' Pearsons.

    The 50 articles are resampled with replacement (a document bootstrap: a pair's rating shares
    its articles with 98 other pairs, so resampling pairs would understate the spread), and each
    resample is scored on its pairs of two different articles. With ``other``, every resample
    scores both models on the same articles, so the interval is that of the *paired*
    difference ``pearson(other) - pearson(embeddings)``: a difference whose interval contains 0
    is within what the choice of articles alone moves.

    Args:
        embeddings: (50, dim) embeddings, row k of ``lee_documents()[k]``.
        other: optional (50, dim) embeddings of another model (e.g. quantized).
        n_resamples: bootstrap resamples (at least 100).
        level: coverage of the percentile interval, strictly between 0 and 1.
        seed: seed of the resampling, so that the interval is reproducible.

    Returns:
        ``{"estimate", "low", "high", "level", "n_resamples"}``; ``estimate`` is the value on
        the 50 articles as given (:func:`lee_correlation`'s Pearson, or the difference).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} is out of range: expected a coverage strictly "
                         "between 0 and 1, such as 0.95")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples={n_resamples!r} is too few: expected an int >= 100 "
                         "(2000 gives intervals stable to about 0.002)")
    models = [embeddings] if other is None else [embeddings, other]
    similarities = []
    for name, e in zip(("embeddings", "other")[: len(models)], models, strict=True):
        matrix = _as_matrix(name, e)
        if matrix.shape[0] != N_RATED:
            raise ValueError(f"{name} has {matrix.shape[0]} rows: expected {N_RATED}, one per "
                             "Lee article in the order of lee_documents()")
        similarities.append(cosine_matrix(matrix))
    i, j, rating = lee_pair_ratings()
    human = np.zeros((N_RATED, N_RATED))
    human[i, j] = human[j, i] = rating

    def score(rows: np.ndarray) -> float:
        a, b = rows[i], rows[j]  # every pair of positions in the resample
        keep = a != b  # an article drawn twice is not a pair
        values = [pearson(s[a[keep], b[keep]], human[a[keep], b[keep]]) for s in similarities]
        return values[0] if other is None else values[1] - values[0]

    rng = np.random.default_rng(seed)
    draws = np.array([score(rng.integers(0, N_RATED, N_RATED)) for _ in range(n_resamples)])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return {"estimate": score(np.arange(N_RATED)), "low": float(low), "high": float(high),
            "level": level, "n_resamples": n_resamples}
