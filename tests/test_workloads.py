"""Tests for quantbook.workloads: the GPT workload for real, MiniLM's wiring on a tiny BERT.

Loading MiniLM and embedding the 50 Lee documents takes most of a minute on one thread, so the
MiniLM workload is built around a tiny BertModel with MiniLM's tokenizer; tests/test_minilm.py
and the notebooks cover the real model.
"""

import pytest
import torch
from conftest import make_bert
from torch import nn

from quantbook import bench, choose, data, evaluate, minilm, workloads
from quantbook.records import load_records
from quantbook.validate import check_batches


@pytest.fixture(scope="module")
def gpt_workload():
    return workloads.gpt_workload(latency_windows=2)


def test_gpt_workload_times_validation_windows_and_calibrates_on_training_text(gpt_workload):
    w = gpt_workload
    assert (w.name, w.metric, w.linear_targets) == ("gpt", "perplexity",
                                                     ("attention", "ffn", "head"))
    block = w.model.config.block_size
    (batch,) = w.timed_inputs
    assert batch.shape == (2, block) and batch.dtype == torch.long
    assert len(w.calibration) == 8 and all(b.shape == (8, block) for b in w.calibration)
    assert check_batches(w.model, w.calibration) == w.calibration
    assert w.describe() == (f"timed call: 1 batch of token ids, 2x{block}; calibration: 8 batches "
                            f"of token ids, {', '.join([f'8x{block}'] * 7)} and 8x{block}")
    with torch.no_grad():
        assert w.run(w.model)[0].shape == (2, block, w.model.config.vocab_size)
    assert not w.model.training


def test_gpt_workload_measures_the_committed_float_perplexity(gpt_workload):
    _, records = load_records(bench.COMMITTED)
    (committed,) = [r for r in choose.model_records(records, "gpt") if r.method == "float32"]
    assert gpt_workload.evaluate(gpt_workload.model) == pytest.approx(committed.value, rel=1e-6)


def test_minilm_workload_wiring(monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm.model_dir())
    model = make_bert(vocab_size=tokenizer.vocab_size, max_positions=512)
    calls = []

    def fake_evaluate(m, tok, reference=None):
        calls.append((m, tok, reference))
        return {"embeddings": torch.eye(2), "pearson": 0.6}

    monkeypatch.setattr(minilm, "load_minilm", lambda: (model, tokenizer))
    monkeypatch.setattr(evaluate, "evaluate_minilm", fake_evaluate)
    w = workloads.minilm_workload()
    assert (w.name, w.metric, w.linear_targets) == ("minilm", "lee_pearson",
                                                     ("attention", "ffn"))
    assert calls == []  # the float reference is computed at the first evaluation, not here
    assert w.quality(model) == (0.6, {"cosine_mean": pytest.approx(1.0)})
    assert w.quality(model) == (0.6, {"cosine_mean": pytest.approx(1.0)})
    assert calls == [(model, tokenizer, None)]  # the float model evaluated once
    # the timed call encodes the 50 rated documents, 16 at a time
    assert [b["input_ids"].shape[0] for b in w.timed_inputs] == [16, 16, 16, 2]
    docs = tokenizer(data.lee_documents()[:16], padding=True, truncation=True,
                     max_length=minilm.max_seq_length(), return_tensors="pt")
    assert torch.equal(w.timed_inputs[0]["input_ids"], docs["input_ids"])
    # calibration: training articles, never the rated documents
    assert len(w.calibration) == 8 and all(type(b) is dict for b in w.calibration)
    assert check_batches(model, w.calibration) == w.calibration
    expected = data.minilm_calibration_batches(tokenizer, n_batches=8)
    assert all(torch.equal(a["input_ids"], b["input_ids"])
               for a, b in zip(w.calibration, expected, strict=True))
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(kwargs),
                                             with_kwargs=True)
    w.run(model)
    handle.remove()
    assert len(seen) == 4 and {"input_ids", "attention_mask"} <= set(seen[0])
    # the bench times the first 16 articles only; the quality still uses all 50
    short = bench.workload("minilm")
    assert bench.TIMED_ARTICLES == 16
    assert [b["input_ids"].shape[0] for b in short.timed_inputs] == [16]
    assert torch.equal(short.timed_inputs[0]["input_ids"], docs["input_ids"])
    assert [b["input_ids"].shape[0] for b in
            workloads.minilm_workload(20).timed_inputs] == [16, 4]
    for bad in (0, 51, 2.5, True):
        with pytest.raises(ValueError, match=rf"timed_articles={bad!r} is not supported: "
                                             "choose an integer from 1 to 50"):
            workloads.minilm_workload(bad)


def test_minilm_quality_evaluates_the_float_model_once(monkeypatch):
    import quantbook.evaluate

    float_model, other = nn.Linear(1, 1), nn.Linear(1, 1)
    embeddings = {id(float_model): torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                  id(other): torch.tensor([[1.0, 1.0], [0.0, 2.0]])}
    calls = []

    def fake(model, tokenizer, reference=None):
        calls.append(model)
        assert tokenizer == "tok"
        return {"pearson": 0.5 if model is float_model else 0.4,
                "embeddings": embeddings[id(model)]}

    monkeypatch.setattr(quantbook.evaluate, "evaluate_minilm", fake)
    evaluate = workloads.minilm_quality(float_model, "tok")
    # row cosines 1/sqrt(2) and 1, by hand
    expected = pytest.approx((2 ** -0.5 + 1) / 2)
    assert evaluate(other) == {"lee_pearson": 0.4, "cosine_mean": expected}
    assert evaluate(float_model) == {"lee_pearson": 0.5, "cosine_mean": pytest.approx(1.0)}
    assert calls == [float_model, other]  # the float model once, before the first other
