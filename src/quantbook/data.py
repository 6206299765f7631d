"""The Lee corpus, read offline from the test data that ships inside gensim's wheel.

Lee, Pincombe & Welsh (2005) collected short Australian news articles and asked people to rate
how similar each pair is. gensim installs three files from that study in ``gensim/test/test_data/``:

- ``lee_background.cor``: 300 articles, one per line (~360 KB): our language-modelling corpus.
  Seven of them appear twice; :func:`lee_split` drops the repeats so none straddles the split.
- ``lee.cor``: the 50 articles that were rated.
- ``similarities0-1.txt``: the mean human rating (0..1) of every pair of those 50, stored as the
  upper triangle of a 50 x 50 tab-separated matrix (ones on the diagonal, zeros below it).

Calibration batches for static quantization come from the training articles, never from the
evaluation text (:func:`gpt_calibration_batches`, :func:`minilm_calibration_batches`).

The files are located with ``importlib.util.find_spec`` so gensim itself is never imported.
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

GENSIM_PIN = "gensim==4.4.0"
N_BACKGROUND = 300
N_RATED = 50
# lee.cor contains one Latin-1 byte (0xA3, the pound sign) that is not valid UTF-8;
# lee_background.cor is pure ASCII, so Latin-1 reads both exactly.
ENCODING = "latin-1"


def lee_dir() -> pathlib.Path:
    """Return the folder of gensim's test data, without importing gensim.

    Returns:
        The path of ``gensim/test/test_data`` inside the installed package.

    Raises:
        ModuleNotFoundError: gensim is not installed.
        FileNotFoundError: gensim is installed but its test data is missing.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Lee corpus is read from the test data of the package 'gensim', which is not "
            f"installed: run `pip install {GENSIM_PIN}`",
            name="gensim",
        )
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not (folder / "lee_background.cor").is_file():
        raise FileNotFoundError(
            f"gensim is installed but its test data is missing from {folder}: reinstall it with "
            f"`pip install --force-reinstall {GENSIM_PIN}`"
        )
    return folder


def _read_articles(name: str, expected: int) -> list[str]:
    lines = (lee_dir() / name).read_text(encoding=ENCODING).splitlines()
    articles = [line.strip() for line in lines if line.strip()]
    if len(articles) != expected:
        raise ValueError(f"{name} holds {len(articles)} articles, expected {expected}")
    return articles


def lee_background() -> list[str]:
    """Return the 300 background articles, one string per article."""
    return _read_articles("lee_background.cor", N_BACKGROUND)


def lee_documents() -> list[str]:
    """Return the 50 articles that people rated for similarity (``lee.cor``)."""
    return _read_articles("lee.cor", N_RATED)


def lee_similarities() -> np.ndarray:
    """Return the human similarity ratings of the 50 rated articles as a symmetric matrix.

    The file stores only the upper triangle (zeros below the diagonal); a file that stores the
    full symmetric matrix is accepted too. Ratings are means over raters of a 1..5 score divided
    by 5, so off-diagonal values lie in [0.2, 1.0]; the diagonal is 1.

    Returns:
        A float64 array of shape (50, 50) with ``s[i, j] == s[j, i]``.
    """
    text = (lee_dir() / "similarities0-1.txt").read_text(encoding=ENCODING)
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) != N_RATED or any(len(row) != N_RATED for row in rows):
        shape = (len(rows), sorted({len(row) for row in rows}))
        raise ValueError(f"similarities0-1.txt: expected 50 rows of 50 numbers, got {shape}")
    matrix = np.array(rows, dtype=np.float64)  # (50, 50)
    upper = np.triu(matrix, k=1)
    lower = np.tril(matrix, k=-1)
    if np.any(lower) and not np.allclose(lower, upper.T):
        raise ValueError("similarities0-1.txt is neither upper-triangular nor symmetric")
    symmetric = upper + upper.T + np.diag(np.diag(matrix))
    return symmetric


def lee_pair_ratings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the 1,225 rated pairs as ``(i, j, rating)`` arrays with ``i < j``, row-major order."""
    i, j = np.triu_indices(N_RATED, k=1)
    return i, j, lee_similarities()[i, j]


@dataclass(frozen=True)
class TextSplit:
    """Training and validation text, each a run of articles joined by newlines."""

    train: str
    validation: str


def _split_articles(validation_fraction: float) -> tuple[list[str], list[str]]:
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction={validation_fraction!r} is out of range: expected a number "
            "strictly between 0 and 1, such as 0.1"
        )
    unique = list(dict.fromkeys(lee_background()))  # drop verbatim repeats, keep first: 293 left
    train, validation = [], []
    for k, article in enumerate(unique):
        # Article k is validation when the running count floor((k + 1) * f) steps up: evenly
        # spaced, no randomness. With f = 0.1 that is every 10th article (k = 9, 19, ..., 299).
        is_val = int((k + 1) * validation_fraction) > int(k * validation_fraction)
        (validation if is_val else train).append(article)
    return train, validation


def lee_split(validation_fraction: float = 0.1) -> TextSplit:
    """Split the 300 background articles by article into training and validation text.

    ``lee_background.cor`` repeats 7 articles verbatim, so the repeats are dropped first
    (keeping first occurrences, in file order), leaving 293 distinct articles. Then the split is
    deterministic and evenly spaced: with the default 0.1, every 10th distinct article (indices
    9, 19, ..., 289) is validation (29 articles), the other 264 are training. Splitting by
    distinct article, not by character, keeps every text wholly on one side. Articles are joined
    with ``"\\n"``.

    Args:
        validation_fraction: share of articles held out, strictly between 0 and 1.

    Returns:
        A :class:`TextSplit`.
    """
    train, validation = _split_articles(validation_fraction)
    return TextSplit(train="\n".join(train), validation="\n".join(validation))


def calibration_texts(n: int, seed: int = 0) -> list[str]:
    """Draw ``n`` distinct training articles (never validation) for static-quantization calibration.

    Args:
        n: number of articles, 1..264 (the training articles of the default split).
        seed: seed of the NumPy generator that picks them; the same seed gives the same list.

    Returns:
        The chosen articles, in the random order drawn.
    """
    train, _ = _split_articles(0.1)  # the default split of lee_split()
    if not isinstance(n, int) or not 1 <= n <= len(train):
        raise ValueError(f"n={n!r} is out of range: expected an integer from 1 to {len(train)}")
    picks = np.random.default_rng(seed).choice(len(train), size=n, replace=False)
    return [train[k] for k in picks]


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not supported: pass a positive integer")


def gpt_calibration_batches(tokenizer, block_size: int, n_batches: int = 8,
                            batch_size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Token windows for calibrating the GPT, from the training text (never evaluation text).

    Windows of ``block_size`` tokens start at distinct random positions of
    ``quantbook.data.lee_split().train``, drawn with NumPy's generator seeded by ``seed``.

    Returns:
        ``n_batches`` LongTensors of shape ``(batch_size, block_size)``.
    """
    for name, value in (("n_batches", n_batches), ("batch_size", batch_size),
                        ("block_size", block_size)):
        _check_count(name, value)
    ids = torch.tensor(tokenizer.encode(lee_split().train), dtype=torch.long)
    n_windows = n_batches * batch_size
    n_starts = ids.numel() - block_size + 1
    if n_windows > n_starts:
        raise ValueError(
            f"n_batches={n_batches} x batch_size={batch_size} windows of {block_size} tokens "
            f"need {n_windows} start positions, the training text has {max(n_starts, 0)}: "
            "ask for fewer batches"
        )
    starts = np.random.default_rng(seed).choice(n_starts, size=n_windows, replace=False)
    windows = torch.stack([ids[s : s + block_size] for s in starts.tolist()])  # (N, T)
    return list(windows.view(n_batches, batch_size, block_size))  # n x (batch, T)


def minilm_calibration_batches(tokenizer, n_batches: int = 8, batch_size: int = 8,
                               seed: int = 0, max_length: int = 256) -> list[dict]:
    """Tokenized training articles (never the 50 evaluation documents) for MiniLM.

    Returns:
        ``n_batches`` tokenizer outputs (dicts of ``input_ids``, ``attention_mask``, ...),
        padded to the longest article of each batch and truncated at ``max_length``.
    """
    _check_count("n_batches", n_batches)
    _check_count("batch_size", batch_size)
    if not callable(tokenizer):
        raise TypeError(f"tokenizer is a {type(tokenizer).__name__}, which is not callable: "
                        "pass MiniLM's tokenizer (load_minilm()[1]); the GPT's batches come "
                        "from gpt_calibration_batches(tokenizer, block_size)")
    texts = calibration_texts(n_batches * batch_size, seed)
    return [
        dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                       max_length=max_length, return_tensors="pt"))
        for i in range(0, len(texts), batch_size)
    ]
