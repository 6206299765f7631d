"""Tests for quantbook.stored_quality: stored MiniLM qualities and their cheap re-check."""

import json

import pytest

from quantbook import stored_quality
from quantbook.methods import DynamicConfig, TorchaoDynamicConfig, quantize
from quantbook.minilm import load_minilm


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def float_stored(minilm, tmp_path_factory):
    """The float model's check embeddings, saved and loaded back."""
    model, tokenizer = minilm
    embeddings = stored_quality._check_embeddings(model, tokenizer)
    row = stored_quality.StoredQuality(
        method="float32", lee_pearson=0.6, cosine_mean=1.0, cosine_min=1.0,
        check_embeddings=tuple(tuple(float(v) for v in r) for r in embeddings))
    path = tmp_path_factory.mktemp("stored") / "q.json"
    stored_quality.save(path, [row], machine={"cpu": "test"})
    assert json.loads(path.read_text())["machine"] == {"cpu": "test"}
    return stored_quality.load(path)["float32"]


def test_the_same_model_passes_the_check(minilm, float_stored):
    model, tokenizer = minilm
    assert stored_quality.check(model, tokenizer, float_stored) > 0.99999


def test_another_model_fails_the_check(minilm, float_stored):
    model, tokenizer = minilm
    dynamic, _ = quantize(model, DynamicConfig())  # per-tensor int8: cosine about 0.98
    with pytest.raises(ValueError, match=r"computes something else than the stored 'float32' "
                                         r"\(cosine 0\.\d+ < min_cosine=0\.999\)"):
        stored_quality.check(dynamic, tokenizer, float_stored)


def test_check_refuses_bad_arguments(minilm, float_stored):
    model, tokenizer = minilm
    with pytest.raises(TypeError, match="stored is a dict: pass one StoredQuality"):
        stored_quality.check(model, tokenizer, {"method": "x"})
    with pytest.raises(ValueError, match=r"min_cosine=1\.5 is not a cosine in \(0, 1\]"):
        stored_quality.check(model, tokenizer, float_stored, min_cosine=1.5)


def test_load_names_the_make_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `make stored-quality`"):
        stored_quality.load(tmp_path / "missing.json")


def test_measure_quality_stores_what_the_evaluation_gives(minilm, monkeypatch):
    model, tokenizer = minilm
    monkeypatch.setattr(stored_quality, "evaluate_minilm", lambda m, t, r: {
        "pearson": 0.61, "cosine_mean": 0.99, "cosine_min": 0.97})
    row = stored_quality.measure_quality(model, tokenizer, None, "label")
    assert (row.method, row.quality()) == ("label", (0.61, {"cosine_mean": 0.99,
                                                            "cosine_min": 0.97}))
    assert len(row.check_embeddings) == stored_quality.CHECK_ARTICLES
    assert stored_quality.check(model, tokenizer, row) > 0.99999


def test_the_committed_file_holds_the_chapters_models(minilm):
    from quantbook import explore_calibration as ec
    from quantbook.methods.static import OBSERVERS

    rows = stored_quality.load()
    torchao = {"torchao int8 dynamic", "torchao int8 static"}
    grid = {ec.grid_label(observer, n, linears) for observer in OBSERVERS for n in (1, 8)
            for linears in ("attention", "attention + FFN")}  # chapter 05's calibration grid
    assert set(rows) == torchao | grid and len(grid) == 12
    for method, row in rows.items():
        assert 0.6 < row.lee_pearson < 0.7 and 0 < row.cosine_min <= row.cosine_mean < 1
        assert method in grid or row.cosine_min > 0.9
    model, tokenizer = minilm
    dynamic, _ = quantize(model, TorchaoDynamicConfig())  # the chapter-04 model, re-checked
    assert stored_quality.check(model, tokenizer, rows["torchao int8 dynamic"],
                                min_cosine=0.99) < 0.9999  # float32 is close, not the same
    assert stored_quality.check(dynamic, tokenizer, rows["torchao int8 dynamic"]) > 0.9999
