import copy
import warnings

import pytest
import torch
from torch import nn

from quantbook.data import calibration_texts, lee_documents, lee_split
from quantbook.gpt import CharTokenizer
from quantbook.methods import static
from quantbook.methods.static import (
    StaticConfig,
    calibrate,
    convert_static,
    count_boundaries,
    gpt_calibration_batches,
    minilm_calibration_batches,
    prepare_static,
    quantize_static,
    run_batches,
)
from quantbook.quiet import silence_known_noise
from quantbook.targets import list_targets

with warnings.catch_warnings():
    silence_known_noise()
    import torch.ao.nn.quantized as nnq
    import torch.ao.quantization as tq


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))


def linears(model):
    return list_targets(model)["attention"] + list_targets(model)["ffn"]


def test_round_trip_close_to_float(gpt, batches, ids):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_static(gpt, StaticConfig(observer="minmax"))
        calibrate(prepared, batches)
        q, report = convert_static(prepared)
    assert caught == []
    assert sorted(report.converted) == sorted(linears(gpt))
    assert type(q.blocks[0].attn.q_proj.module) is nnq.Linear
    assert type(gpt.blocks[0].attn.q_proj) is nn.Linear  # the input model is untouched
    reference = gpt(ids)[0]
    error = (q(ids)[0] - reference).abs().max()
    assert error < 0.05 * reference.abs().max()


def test_activation_qparams_come_from_calibration_range(gpt, batches):
    seen = []
    hook = gpt.blocks[1].mlp.fc_in.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            for b in batches:
                gpt(b)
    finally:
        hook.remove()
    low = min(float(x.min()) for x in seen + [torch.zeros(1)])
    high = max(float(x.max()) for x in seen + [torch.zeros(1)])
    prepared = calibrate(prepare_static(gpt, StaticConfig(observer="minmax")), batches)
    q, _ = convert_static(prepared)
    quant = q.blocks[1].mlp.fc_in.quant
    scale = (high - low) / 127  # quint8 [0, 127] on x86
    assert float(quant.scale) == pytest.approx(scale, rel=1e-5)
    assert int(quant.zero_point) == round(-low / scale)


@pytest.mark.parametrize(
    ("observer", "cls"),
    [("minmax", "MinMaxObserver"), ("moving_average", "MovingAverageMinMaxObserver"),
     ("histogram", "HistogramObserver")],
)
def test_observers_selectable(gpt, observer, cls):
    prepared = prepare_static(gpt, StaticConfig(observer=observer), modules=["lm_head"])
    assert type(prepared.lm_head.quant.activation_post_process).__name__ == cls


@pytest.mark.parametrize(
    ("granularity", "qscheme"),
    [("channel", torch.per_channel_affine), ("tensor", torch.per_tensor_affine)],
)
def test_weight_granularity(gpt, batches, granularity, qscheme):
    prepared = prepare_static(gpt, StaticConfig(observer="minmax", granularity=granularity))
    q, _ = convert_static(calibrate(prepared, batches))
    assert q.blocks[0].mlp.fc_out.module.weight().qscheme() == qscheme


def test_quantize_static_uses_torch_quantize(gpt, batches, ids, monkeypatch):
    calls = []
    real = tq.quantize

    def spy(model, run_fn, run_args, *args, **kwargs):
        calls.append(run_args)
        return real(model, run_fn, run_args, *args, **kwargs)

    monkeypatch.setattr(tq, "quantize", spy)
    config = StaticConfig(observer="minmax")
    q, report = quantize_static(gpt, config, run_batches, (batches,))
    assert len(calls) == 1 and calls[0][0] is batches
    manual, _ = convert_static(calibrate(prepare_static(gpt, config), batches))
    assert sorted(report.converted) == sorted(linears(gpt))
    torch.testing.assert_close(q(ids)[0], manual(ids)[0], rtol=0, atol=0)


def test_report_lists_float_islands(gpt, batches):
    q, report = quantize_static(gpt, StaticConfig(observer="minmax"), run_batches, (batches,))
    assert {"tok_emb", "blocks.0.ln_1", "blocks.0.mlp.gelu", "ln_f", "lm_head"} <= set(
        report.float_modules)
    assert not any(name.startswith("blocks.0.attn.q_proj") for name in report.float_modules)
    assert "softmax" in report.summary() and "residual adds" in report.summary()


def test_count_boundaries(gpt, batches, ids):
    q, report = quantize_static(gpt, StaticConfig(observer="minmax"), run_batches, (batches,))
    n = len(report.converted)
    assert count_boundaries(q, lambda: q(ids)) == {"quantize": n, "dequantize": n}
    assert count_boundaries(q, lambda: (q(ids), q(ids))) == {"quantize": 2 * n,
                                                             "dequantize": 2 * n}
    assert count_boundaries(gpt, lambda: gpt(ids)) == {"quantize": 0, "dequantize": 0}


def test_calibrate_progress_and_empty(gpt, batches):
    prepared = prepare_static(gpt, StaticConfig(observer="minmax"), modules=["lm_head"])
    seen = []
    calibrate(prepared, batches, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="batches is empty"):
        calibrate(prepared, [])


def test_errors(gpt):
    with pytest.raises(ValueError, match=r"observer='percentile' is not supported: choose one"):
        StaticConfig(observer="percentile")
    with pytest.raises(ValueError, match=r"granularity='group' is not supported"):
        StaticConfig(granularity="group")
    with pytest.raises(ValueError, match=r"names 'embeddings'"):
        StaticConfig(targets=("embeddings",))
    with pytest.raises(ValueError, match=r"not a model from prepare_static"):
        convert_static(copy.deepcopy(gpt))
    with pytest.raises(ValueError, match=r"converted no module.*LayerNorm"):
        quantize_static(gpt, StaticConfig(), run_batches, ([],), modules=["ln_f"])
    with pytest.raises(ValueError, match=r"tensors on meta.*CPU only"):
        prepare_static(copy.deepcopy(gpt).to("meta"))


def test_gpt_calibration_batches_come_from_training_text():
    train = lee_split().train
    tokenizer = CharTokenizer.from_text(train)
    out = gpt_calibration_batches(tokenizer, block_size=32, n_batches=2, batch_size=4)
    assert len(out) == 2 and out[0].shape == (4, 32) and out[0].dtype == torch.long
    windows = [tokenizer.decode(w) for batch in out for w in batch]
    assert len(set(windows)) == 8 and all(w in train for w in windows)
    assert not any(w in doc for w in windows for doc in lee_documents())
    again = gpt_calibration_batches(tokenizer, block_size=32, n_batches=2, batch_size=4)
    assert all(torch.equal(x, y) for x, y in zip(out, again, strict=True))  # seeded
    with pytest.raises(ValueError, match="ask for fewer batches"):
        gpt_calibration_batches(tokenizer, block_size=16, n_batches=10**6, batch_size=4)


def test_minilm_calibration_batches_batch_the_training_articles():
    calls = []

    def fake_tokenizer(texts, **kwargs):
        calls.append((list(texts), kwargs))
        return {"input_ids": torch.zeros(len(texts), 3, dtype=torch.long)}

    out = minilm_calibration_batches(fake_tokenizer, n_batches=3, batch_size=2, seed=1)
    assert [b["input_ids"].shape[0] for b in out] == [2, 2, 2]
    assert [t for texts, _ in calls for t in texts] == calibration_texts(6, seed=1)
    assert calls[0][1]["max_length"] == 256 and calls[0][1]["truncation"] is True


def test_forward_batch_dispatch():
    seen = []

    class Probe(nn.Module):
        def forward(self, x=None, **kwargs):
            seen.append((x, sorted(kwargs)))

    static.forward_batch(Probe(), {"input_ids": 1, "attention_mask": 2})
    static.forward_batch(Probe(), 5)
    assert seen == [(None, ["attention_mask", "input_ids"]), (5, [])]
