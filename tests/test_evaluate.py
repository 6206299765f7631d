import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from quantbook.data import lee_dir, lee_similarities
from quantbook.evaluate import (
    average_ranks,
    embedding_cosine,
    evaluate_minilm,
    lee_correlation,
    pearson,
    pearson_interval,
    spearman,
)

# pairs of equal-length samples; small integers make ties frequent
samples = st.integers(min_value=3, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-5, 5), min_size=n, max_size=n),
        st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_pearson_and_spearman_match_scipy(pair):
    x, y = (np.asarray(v, dtype=np.float64) for v in pair)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert math.isnan(pearson(x, y))
        return
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-9)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_average_ranks_match_scipy_rankdata(values):
    np.testing.assert_array_equal(average_ranks(values), stats.rankdata(values, method="average"))


def test_average_ranks_by_hand():
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 30]), [1.0, 2.5, 2.5, 4.0])
    np.testing.assert_array_equal(average_ranks([3, 1, 3, 3]), [3.0, 1.0, 3.0, 3.0])


def test_correlation_input_errors():
    with pytest.raises(ValueError, match=r"x has 3 values and y has 2: expected two sequences"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"at least 2"):
        spearman([1], [1])


def _reference_ratings():
    # read the ratings file directly (upper triangle of a 50 x 50 matrix), not via quantbook.data
    matrix = np.loadtxt(lee_dir() / "similarities0-1.txt")
    i, j = np.triu_indices(50, k=1)
    return i, j, matrix[i, j]


def test_lee_correlation_matches_scipy_on_random_embeddings():
    embeddings = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    i, j, rating = _reference_ratings()
    cosine = torch.nn.functional.cosine_similarity(
        embeddings[:, None, :].double(), embeddings[None, :, :].double(), dim=-1
    ).numpy()[i, j]
    result = lee_correlation(embeddings * 3.0)  # rows need not be normalised
    assert result["n_pairs"] == 1225
    assert result["pearson"] == pytest.approx(stats.pearsonr(cosine, rating).statistic, abs=1e-9)
    assert result["spearman"] == pytest.approx(
        stats.spearmanr(cosine, rating).statistic, abs=1e-9
    )


def test_lee_correlation_errors():
    with pytest.raises(ValueError, match=r"embeddings has 49 rows: expected 50"):
        lee_correlation(np.ones((49, 4)))
    with pytest.raises(ValueError, match=r"embeddings has shape \(50,\): expected a 2-D"):
        lee_correlation(np.ones(50))
    with pytest.raises(ValueError, match=r"all-zero row"):
        lee_correlation(np.zeros((50, 4)))


def test_embedding_cosine_matches_torch():
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(8, 32, generator=g)
    other = reference + 0.3 * torch.randn(8, 32, generator=g)
    expected = torch.nn.functional.cosine_similarity(reference.double(), other.double(), dim=1)
    result = embedding_cosine(reference, other.numpy())
    assert result["mean"] == pytest.approx(expected.mean().item(), abs=1e-12)
    assert result["min"] == pytest.approx(expected.min().item(), abs=1e-12)
    assert embedding_cosine(reference, reference)["min"] == pytest.approx(1.0)


def test_embedding_cosine_errors():
    with pytest.raises(ValueError, match=r"reference has shape \(2, 3\) but other has shape"):
        embedding_cosine(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"all zeros"):
        embedding_cosine(np.ones((2, 3)), np.zeros((2, 3)))


def test_evaluate_minilm_on_the_float_model():
    from quantbook.minilm import load_minilm

    model, tokenizer = load_minilm()
    reference = torch.ones(50, 384)  # any fixed direction: checks the cosine plumbing
    result = evaluate_minilm(model, tokenizer, reference=reference)
    embeddings = result["embeddings"].double()
    assert embeddings.shape == (50, 384)
    i, j, rating = _reference_ratings()
    unit = embeddings / embeddings.norm(dim=1, keepdim=True)
    cosine = (unit @ unit.T).numpy()[i, j]
    assert result["pearson"] == pytest.approx(stats.pearsonr(cosine, rating).statistic, abs=1e-9)
    assert result["spearman"] == pytest.approx(
        stats.spearmanr(cosine, rating).statistic, abs=1e-9
    )
    assert result["n_pairs"] == 1225
    assert 0.5 < result["pearson"] < 0.9  # a real sentence encoder agrees with people
    to_reference = unit.sum(dim=1) / math.sqrt(384)  # cosine of each row with (1, ..., 1)
    assert result["cosine_mean"] == pytest.approx(to_reference.mean().item(), abs=1e-9)
    assert result["cosine_min"] == pytest.approx(to_reference.min().item(), abs=1e-9)


def _lee_like_embeddings(noise: float, seed: int) -> np.ndarray:
    """Embeddings whose cosines follow the human ratings, plus noise: a Pearson well above 0."""
    rng = np.random.default_rng(seed)
    values, vectors = np.linalg.eigh(lee_similarities() + np.eye(50))
    base = vectors * np.sqrt(np.clip(values, 0, None))  # (50, 50): rows' dot products ~ ratings
    return base + noise * rng.standard_normal(base.shape)


def test_pearson_interval_contains_the_estimate_and_is_reproducible():
    e = _lee_like_embeddings(0.3, seed=0)
    ci = pearson_interval(e, n_resamples=300)
    assert ci["estimate"] == pytest.approx(lee_correlation(e)["pearson"])
    assert ci["low"] < ci["estimate"] < ci["high"]
    assert 0.01 < ci["high"] - ci["low"] < 0.5  # 50 articles: a real, finite spread
    assert pearson_interval(e, n_resamples=300) == ci  # seeded
    wider = pearson_interval(e, n_resamples=300, level=0.99)
    assert wider["low"] <= ci["low"] and wider["high"] >= ci["high"]


def test_paired_difference_interval():
    e = _lee_like_embeddings(0.3, seed=0)
    same = pearson_interval(e, e.copy(), n_resamples=200)
    assert same["estimate"] == same["low"] == same["high"] == 0.0  # identical models
    worse = pearson_interval(e, _lee_like_embeddings(3.0, seed=1), n_resamples=200)
    assert worse["estimate"] < 0 and worse["high"] < 0  # much noisier: clearly worse
    tiny = pearson_interval(e, e + 1e-3 * np.random.default_rng(2).standard_normal(e.shape),
                            n_resamples=200)
    single = pearson_interval(e, n_resamples=200)
    # pairing cancels what the two models share: the difference's interval is far narrower
    assert 20 * (tiny["high"] - tiny["low"]) < single["high"] - single["low"]


def test_pearson_interval_errors():
    e = _lee_like_embeddings(0.3, seed=0)
    with pytest.raises(ValueError, match="level=1.5"):
        pearson_interval(e, level=1.5)
    with pytest.raises(ValueError, match="n_resamples=10"):
        pearson_interval(e, n_resamples=10)
    with pytest.raises(ValueError, match="other has 49 rows"):
        pearson_interval(e, e[:49])
