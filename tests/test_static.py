"""Tests for quantbook.methods.static against torch.ao's observers and its own convert."""

import copy
import warnings

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook.methods import static
from quantbook.methods.static import (
    StaticConfig,
    calibrate,
    convert_static,
    count_boundaries,
    prepare_static,
    quantize_static,
    unobserved,
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
        assert calibrate(prepared, batches) is prepared
        q, report = convert_static(prepared)
    assert caught == []
    assert report.converted == tuple(linears(gpt))
    assert report.label == "static int8 (minmax observer, per-channel weights)"
    assert report.family == "static (eager)"
    assert type(q.blocks[0].attn.q_proj.module) is nnq.Linear
    assert type(gpt.blocks[0].attn.q_proj) is nn.Linear  # the input model is untouched
    assert not hasattr(q, "_quantbook_static") and not q.training
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
    prepared = prepare_static(gpt, StaticConfig(observer=observer, modules=("lm_head",)))
    assert type(prepared.lm_head.quant.activation_post_process).__name__ == cls
    assert not prepared.training


@pytest.mark.parametrize(
    ("granularity", "qscheme"),
    [("channel", torch.per_channel_affine), ("tensor", torch.per_tensor_affine)],
)
def test_weight_granularity(gpt, batches, granularity, qscheme):
    prepared = prepare_static(gpt, StaticConfig(observer="minmax", granularity=granularity))
    q, _ = convert_static(calibrate(prepared, batches))
    assert q.blocks[0].mlp.fc_out.module.weight().qscheme() == qscheme


def test_quantize_static_equals_torch_ao_by_hand(gpt, batches, ids):
    # the reference: each Linear wrapped by hand, torch.ao's prepare, calibration and convert
    q, report = quantize_static(gpt, StaticConfig(observer="minmax"), batches)
    with warnings.catch_warnings():
        silence_known_noise()
        qconfig = tq.QConfig(
            activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, quant_min=0,
                                                   quant_max=127),
            weight=tq.default_per_channel_weight_observer)
        reference = copy.deepcopy(gpt)
        for name in linears(gpt):
            parent, _, child = name.rpartition(".")
            wrapper = tq.QuantWrapper(reference.get_submodule(name))
            wrapper.qconfig = qconfig
            setattr(reference.get_submodule(parent), child, wrapper)
        tq.prepare(reference, inplace=True)
        with torch.no_grad():
            for batch in batches:
                reference(batch)
        tq.convert(reference, inplace=True)
        assert report.converted == tuple(linears(gpt))
        torch.testing.assert_close(q(ids)[0], reference(ids)[0], rtol=0, atol=0)


def test_quantize_static_equals_the_three_steps(gpt, batches, ids):
    config = StaticConfig(observer="histogram")
    q, report = quantize_static(gpt, config, batches)
    manual, manual_report = convert_static(calibrate(prepare_static(gpt, config), batches))
    assert report == manual_report
    torch.testing.assert_close(q(ids)[0], manual(ids)[0], rtol=0, atol=0)


def test_a_custom_run_fn_runs_each_batch(gpt, batches):
    seen = []

    def run_fn(model, batch):
        seen.append(batch.shape)
        model(batch[:, :8])

    quantize_static(gpt, StaticConfig(observer="minmax"), batches, run_fn=run_fn)
    assert seen == [(4, 16)] * 3


def test_report_lists_float_islands(gpt, batches):
    q, report = quantize_static(gpt, StaticConfig(observer="minmax"), batches)
    # float_modules: the float modules with weights; the functional islands are float_ops
    assert {"tok_emb", "pos_emb", "blocks.0.ln_1", "ln_f", "lm_head"} <= set(
        report.float_modules)
    assert not any(name.startswith("blocks.0.attn.q_proj") for name in report.float_modules)
    assert report.float_ops == ("LayerNorm", "GELU", "softmax", "attention matmuls",
                                "residual adds")
    assert "softmax" in report.summary() and "residual adds" in report.summary()


def test_count_boundaries(gpt, batches, ids):
    q, report = quantize_static(gpt, StaticConfig(observer="minmax"), batches)
    n = len(report.converted)
    assert count_boundaries(q, lambda: q(ids)) == {"quantize": n, "dequantize": n}
    assert count_boundaries(q, lambda: (q(ids), q(ids))) == {"quantize": 2 * n,
                                                             "dequantize": 2 * n}
    assert count_boundaries(gpt, lambda: gpt(ids)) == {"quantize": 0, "dequantize": 0}
    assert not any(m._forward_hooks for m in q.modules())  # hooks removed


def test_count_boundaries_refuses_a_result_instead_of_a_callable(gpt, ids):
    with pytest.raises(TypeError, match=r"fn is a tuple: expected a zero-argument callable"):
        count_boundaries(gpt, gpt(ids))


def test_calibrate_progress_and_empty(gpt, batches):
    prepared = prepare_static(gpt, StaticConfig(observer="minmax", modules=("lm_head",)))
    seen = []
    calibrate(prepared, batches, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="batches is empty: calibration needs at least one batch"):
        calibrate(prepared, [])


def test_calibrate_checks_every_batch_before_running_any(gpt, batches):
    prepared = prepare_static(gpt, StaticConfig(observer="minmax", modules=("lm_head",)))
    empty = unobserved(prepared)
    assert "lm_head.quant.activation_post_process" in empty
    with pytest.raises(ValueError, match=r"batches\[3\] holds token ids 64\.\.64"):
        calibrate(prepared, [*batches, torch.full((1, 4), 64)])
    assert unobserved(prepared) == empty  # no batch ran, not even the good ones
    calibrate(prepared, batches)
    assert unobserved(prepared) == []


def test_convert_refuses_observers_without_data(gpt, batches):
    prepared = prepare_static(gpt, StaticConfig(observer="minmax"))
    with pytest.raises(ValueError, match=r"24 observers have seen no data \(e\.g\. "
                                         r"'blocks\.0\.attn\.q_proj\.quant\.activation_post_"
                                         r"process'\): converting now would use a default scale "
                                         r"of 1\.0 .* run calibrate\(prepared, batches\) first"):
        convert_static(prepared)
    # a run that never reaches the head leaves its observers empty: refused as well
    def without_head(model, batch):
        x = model.tok_emb(batch) + model.pos_emb(torch.arange(batch.shape[1]))
        for block in model.blocks:
            x = block(x)

    head = prepare_static(gpt, StaticConfig(observer="minmax", targets=("ffn", "head")))
    calibrate(head, batches, run_fn=without_head)
    with pytest.raises(ValueError, match=r"2 observers have seen no data \(e\.g\. 'lm_head\."):
        convert_static(head)


def test_errors(gpt):
    with pytest.raises(ValueError, match=r"observer='percentile' is not supported: choose one"):
        StaticConfig(observer="percentile")
    with pytest.raises(ValueError, match=r"granularity='group' is not supported"):
        StaticConfig(granularity="group")
    with pytest.raises(ValueError, match=r"targets=\('embeddings',\) names 'embeddings': static "
                                         r"quantization applies to Linear layers"):
        StaticConfig(targets=("embeddings",))
    steps = (r"build it with prepared = prepare_static\(model, config\), run "
             r"calibrate\(prepared, batches\), then convert_static\(prepared\)")
    with pytest.raises(ValueError, match=r"convert_static needs a model from prepare_static: "
                                         + steps):
        convert_static(copy.deepcopy(gpt))
    with pytest.raises(ValueError, match=r"calibrate needs a model from prepare_static: " + steps):
        calibrate(gpt, [torch.zeros(1, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"would convert no module \(ln_f: a LayerNorm"):
        quantize_static(gpt, StaticConfig(modules=("ln_f",)), [torch.zeros(1, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"tensors on the meta device"):
        prepare_static(copy.deepcopy(gpt).to("meta"))
    with pytest.raises(TypeError, match=r"config is a dict: expected a StaticConfig"):
        prepare_static(gpt, {"observer": "minmax"})


def test_quantize_static_with_no_batches(gpt):
    with pytest.raises(ValueError, match=r"batches is empty: calibration needs at least one "
                                         r"batch, e\.g\. quantbook\.data\."):
        quantize_static(gpt, StaticConfig(), [])
    with pytest.raises(TypeError, match=r"batches is a single Tensor: pass a list of batches"):
        quantize_static(gpt, StaticConfig(), torch.zeros(2, 4, dtype=torch.long))


def test_quantize_static_accepts_a_generator(gpt, batches, ids):
    listed, _ = quantize_static(gpt, StaticConfig(observer="minmax"), batches)
    generated, _ = quantize_static(gpt, StaticConfig(observer="minmax"), (b for b in batches))
    torch.testing.assert_close(generated(ids)[0], listed(ids)[0], rtol=0, atol=0)


def test_quantize_static_refuses_a_state_dict_like_the_others(batches):
    with pytest.raises(TypeError, match=r"model is a OrderedDict: expected a torch\.nn\.Module"):
        quantize_static(make_gpt().state_dict(), StaticConfig(), batches)


def test_forward_batch_dispatch():
    seen = []

    class Probe(nn.Module):
        def forward(self, x=None, **kwargs):
            seen.append((x, sorted(kwargs)))

    static.forward_batch(Probe(), {"input_ids": 1, "attention_mask": 2})
    static.forward_batch(Probe(), 5)
    assert seen == [(None, ["attention_mask", "input_ids"]), (5, [])]
