import importlib.util

import numpy as np
import pytest

from quantbook import data


def test_article_counts():
    assert len(data.lee_background()) == 300
    assert len(data.lee_documents()) == 50
    assert all(a and "\n" not in a for a in data.lee_background() + data.lee_documents())


def test_lee_cor_decodes_the_pound_sign():
    # lee.cor holds one byte 0xA3 (Latin-1 pound sign), which is not valid UTF-8.
    assert sum(a.count("\u00a3") for a in data.lee_documents()) == 1


def test_similarities_symmetric_with_real_range():
    s = data.lee_similarities()
    assert s.shape == (50, 50)
    np.testing.assert_array_equal(s, s.T)
    np.testing.assert_array_equal(np.diag(s), np.ones(50))
    off = s[~np.eye(50, dtype=bool)]
    # Mean 1..5 scores divided by 5: the file's actual range is 0.2 to 1.0.
    assert off.min() == pytest.approx(0.2) and off.max() == pytest.approx(1.0)
    # Hand-read from the first line of similarities0-1.txt: "1 0.3 0.24 0.2 0.3 0.5 ..."
    np.testing.assert_allclose(s[0, :6], [1, 0.3, 0.24, 0.2, 0.3, 0.5])
    np.testing.assert_allclose(s[5, 0], 0.5)  # mirrored from the upper triangle


def test_pair_ratings_match_matrix():
    i, j, rating = data.lee_pair_ratings()
    assert i.shape == j.shape == rating.shape == (1225,)
    assert np.all(i < j)
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 1225
    np.testing.assert_array_equal(rating, data.lee_similarities()[i, j])
    assert rating[0] == pytest.approx(0.3)  # pair (0, 1)


def test_split_deterministic_disjoint_covering():
    split = data.lee_split()
    assert split == data.lee_split()
    train, val = split.train.split("\n"), split.validation.split("\n")
    articles = data.lee_background()
    assert len(set(articles)) == 293  # the file repeats 7 articles verbatim
    distinct = [a for k, a in enumerate(articles) if a not in articles[:k]]
    assert len(train) == 264 and len(val) == 29
    assert val == distinct[9::10]  # every 10th distinct article, as documented
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(set(articles))


def test_split_other_fraction_and_bad_fraction():
    split = data.lee_split(0.25)
    assert len(split.validation.split("\n")) == 73  # floor(293 / 4)
    with pytest.raises(ValueError, match=r"validation_fraction=1\.0 is out of range"):
        data.lee_split(1.0)


def test_calibration_texts_from_train_only():
    texts = data.calibration_texts(20, seed=3)
    assert texts == data.calibration_texts(20, seed=3)
    assert texts != data.calibration_texts(20, seed=4)
    assert len(set(texts)) == 20
    val = set(data.lee_split().validation.split("\n"))
    train = set(data.lee_split().train.split("\n"))
    assert set(texts) <= train and val.isdisjoint(texts)
    assert len(data.calibration_texts(264)) == 264
    with pytest.raises(ValueError, match=r"n=265 is out of range: expected an integer from 1 to"):
        data.calibration_texts(265)


def test_missing_gensim_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"'gensim'.*pip install gensim==4\.4\.0"):
        data.lee_dir()
    with pytest.raises(ModuleNotFoundError, match="gensim"):
        data.lee_background()


def test_gensim_is_not_imported():
    import subprocess
    import sys

    code = ("import sys; from quantbook import data; data.lee_split(); data.lee_similarities();"
            "print('gensim' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
