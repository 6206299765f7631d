"""Tests for quantbook.data against hand-read lines of the Lee files and the split's rules."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import make_bert, make_gpt

from quantbook import data
from quantbook.gpt import CharTokenizer
from quantbook.validate import check_batches


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


# ------------------------------------------------------------------ calibration batches


@pytest.fixture(scope="module")
def char_tokenizer():
    return CharTokenizer.from_text(data.lee_split().train)


def test_gpt_calibration_batches_come_from_training_text(char_tokenizer):
    train = data.lee_split().train
    out = data.gpt_calibration_batches(char_tokenizer, block_size=32, n_batches=2, batch_size=4)
    assert len(out) == 2 and out[0].shape == (4, 32) and out[0].dtype == torch.long
    windows = [char_tokenizer.decode(w) for batch in out for w in batch]
    assert len(set(windows)) == 8 and all(w in train for w in windows)
    assert not any(w in doc for w in windows for doc in data.lee_documents())
    again = data.gpt_calibration_batches(char_tokenizer, block_size=32, n_batches=2,
                                         batch_size=4)
    assert all(torch.equal(x, y) for x, y in zip(out, again, strict=True))  # seeded
    other = data.gpt_calibration_batches(char_tokenizer, block_size=32, n_batches=2,
                                         batch_size=4, seed=1)
    assert not torch.equal(out[0], other[0])
    with pytest.raises(ValueError, match=r"n_batches=1000000 x batch_size=4 windows of 16 tokens "
                                         r"need 4000000 start positions, the training text has "
                                         r"\d+: ask for fewer batches"):
        data.gpt_calibration_batches(char_tokenizer, block_size=16, n_batches=10**6,
                                     batch_size=4)


def test_gpt_calibration_batches_pass_the_models_check(char_tokenizer):
    model = make_gpt(vocab_size=char_tokenizer.vocab_size, block_size=16)
    batches = data.gpt_calibration_batches(char_tokenizer, block_size=16, n_batches=3)
    assert len(check_batches(model, batches)) == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_batches=0), r"n_batches=0 is not supported: pass a positive integer"),
    (dict(batch_size=-1), r"batch_size=-1 is not supported"),
    (dict(n_batches=True), r"n_batches=True is not supported"),
    (dict(batch_size=2.0), r"batch_size=2\.0 is not supported"),
])
def test_calibration_batch_counts_are_checked(char_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.gpt_calibration_batches(char_tokenizer, 16, **kwargs)
    with pytest.raises(ValueError, match=match):
        data.minilm_calibration_batches(char_tokenizer, **kwargs)


def test_gpt_calibration_batches_refuse_a_block_size_below_one(char_tokenizer):
    with pytest.raises(ValueError, match=r"block_size=0 is not supported: pass a positive "
                                         r"integer"):
        data.gpt_calibration_batches(char_tokenizer, 0)


def test_minilm_calibration_batches_batch_the_training_articles():
    calls = []

    def fake_tokenizer(texts, **kwargs):
        calls.append((list(texts), kwargs))
        return {"input_ids": torch.zeros(len(texts), 3, dtype=torch.long)}

    out = data.minilm_calibration_batches(fake_tokenizer, n_batches=3, batch_size=2, seed=1)
    assert [b["input_ids"].shape[0] for b in out] == [2, 2, 2]
    assert all(type(b) is dict for b in out)
    assert [t for texts, _ in calls for t in texts] == data.calibration_texts(6, seed=1)
    assert calls[0][1] == dict(padding=True, truncation=True, max_length=256,
                               return_tensors="pt")
    data.minilm_calibration_batches(fake_tokenizer, n_batches=1, max_length=64)
    assert calls[-1][1]["max_length"] == 64


def test_minilm_calibration_batches_pass_the_check_of_a_bert_with_minilms_vocabulary():
    from transformers import AutoTokenizer

    from quantbook.minilm import model_dir

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    batches = data.minilm_calibration_batches(tokenizer, n_batches=2, batch_size=3)
    ids = batches[0]["input_ids"]
    assert ids.shape[0] == 3 and ids.shape[1] <= 256
    assert (ids[:, 0] == tokenizer.cls_token_id).all()

    bert = make_bert(vocab_size=tokenizer.vocab_size, max_positions=512)  # MiniLM's layout
    assert check_batches(bert, batches) == batches


def test_minilm_batches_refuse_the_gpts_tokenizer(char_tokenizer):
    with pytest.raises(TypeError, match=r"tokenizer is a CharTokenizer.*gpt_calibration_batches"):
        data.minilm_calibration_batches(char_tokenizer)
