"""Tests for quantbook.explore_weights against quantize_weights, torch.save and hand counts."""

import html

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from quantbook import explore_weights as ew  # noqa: E402
from quantbook import gpt  # noqa: E402
from quantbook.gpt import GPT, CharTokenizer, GPTConfig  # noqa: E402
from quantbook.measure import size_bytes  # noqa: E402
from quantbook.methods.weight_only import (  # noqa: E402
    PackedLinear,
    WeightOnlyConfig,
    quantize_weights,
)
from quantbook.targets import GROUPS  # noqa: E402

TEXT = "the cat sat on the mat and the dog sat on the log. " * 8
TOKENIZER = CharTokenizer.from_text(TEXT)
IDS = TOKENIZER.encode(TEXT)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=16, n_layer=2, n_head=2,
                       n_embd=64)
    return GPT(config).eval()


MODEL = tiny_gpt()


def sweep(**kwargs):
    return ew.WeightSweep(MODEL, ew.gpt_quality(IDS, 16), **kwargs)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------ configs and labels


def test_make_config_and_describe():
    config = ew.make_config(4)
    assert config == WeightOnlyConfig(bits=4)  # symmetric, per channel, attention + ffn
    assert ew.describe(config) == "int4 per channel, attention + ffn"
    grouped = ew.make_config(3, ["head"], "group", 32)
    assert (grouped.granularity, grouped.group_size, grouped.targets) == ("group", 32, ("head",))
    assert ew.describe(grouped) == "int3 group32, head"
    assert ew.make_config(8, granularity="channel", group_size=32).group_size is None


# ------------------------------------------------------------------ the sweep's models


@pytest.mark.parametrize("config", [
    ew.make_config(4),
    ew.make_config(2, GROUPS, "group", 32),
    ew.make_config(8, ("embeddings", "head")),
    WeightOnlyConfig(bits=3, scheme="asymmetric", targets=("ffn",)),
])
def test_quantized_equals_quantize_weights(config):
    reference, _ = quantize_weights(MODEL, config)
    ours = sweep(cache_weights=True).quantized(config)
    assert_same_state(ours, reference)
    ids = torch.tensor([IDS[:16]])
    torch.testing.assert_close(ours(ids)[0], reference(ids)[0], rtol=0, atol=0)
    torch.testing.assert_close(ours(ids)[0], reference(ids)[0], rtol=0, atol=0)  # cached weight


def test_quantized_shares_packed_modules_and_leaves_the_model_float():
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    s = sweep()
    both = s.quantized(ew.make_config(4))
    attention_only = s.quantized(ew.make_config(4, ["attention"]))
    assert attention_only.blocks[0].attn.q_proj is both.blocks[0].attn.q_proj
    assert isinstance(attention_only.blocks[0].mlp.fc_in, nn.Linear)
    assert attention_only.blocks[0].mlp.fc_in.weight is MODEL.blocks[0].mlp.fc_in.weight
    assert len(s.packed) == 2 * 6  # 2 layers x (4 attention + 2 ffn), built once each
    assert all(type(m) is nn.Linear for m in (MODEL.blocks[0].attn.q_proj, MODEL.lm_head))
    after = MODEL.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    shared = ew.WeightSweep(MODEL, lambda m: {}, packed=s.packed)
    assert shared.quantized(ew.make_config(4)).blocks[1].mlp.fc_out is both.blocks[1].mlp.fc_out


# ------------------------------------------------------------------ sizes


def test_predicted_size_hand_computed():
    # lm_head: Linear(64, vocab) at 4 bits per channel: vocab * 64 / 2 code bytes + vocab scales
    vocab = TOKENIZER.vocab_size
    float_bytes = ew.state_dict_nbytes(MODEL)
    predicted = ew.predicted_size_bytes(MODEL, ew.make_config(4, ["head"]))
    assert predicted == float_bytes - vocab * 64 * 4 + vocab * 64 // 2 + vocab * 4
    # attention + ffn: 2 layers x 12 x 64 x 64 = 98,304 weights; in groups of 32 at 4 bits
    # they take 98,304 / 2 bytes of codes + (98,304 / 32) * 4 bytes of scales
    predicted = ew.predicted_size_bytes(MODEL, ew.make_config(4, granularity="group",
                                                              group_size=32))
    assert predicted == float_bytes - 98_304 * 4 + 98_304 // 2 + 98_304 // 32 * 4


def test_converted_weight_bytes_hand_computed():
    # int8 per channel: each 64-wide row of 256 bytes becomes 64 codes + one 4-byte scale
    float_bytes, quantized_bytes = ew.converted_weight_bytes(MODEL, ew.make_config(8))
    assert float_bytes == 98_304 * 4
    rows = 2 * (4 * 64 + 256 + 64)  # 2 layers: q, k, v, out (64 rows), fc_in 256, fc_out 64
    assert quantized_bytes == 98_304 + 4 * rows


def test_size_table_lists_the_sweep_sizes():
    s = sweep()
    text = ew.size_table(s, {"attention + ffn": ("attention", "ffn"), "head": ("head",)},
                         bits=(8, 2))
    lines = text.splitlines()
    assert len(lines) == 2 + 4 and lines[1].startswith("none (float32)")
    measured, calculated = s.size(ew.make_config(2, ["head"]))
    ratio = size_bytes(MODEL) / measured
    assert lines[-1].split() == ["head", "2", f"{measured:,}", f"{calculated:,}",
                                 f"{measured - calculated:,}", f"{ratio:.2f}x"]


@settings(max_examples=10, deadline=None)
@given(bits=st.integers(2, 8), scheme=st.sampled_from(["symmetric", "asymmetric"]),
       granularity=st.sampled_from([("tensor", None), ("channel", None), ("group", 32)]),
       targets=st.sets(st.sampled_from(GROUPS), min_size=1))
def test_predicted_size_equals_the_real_state_dict(bits, scheme, granularity, targets):
    config = WeightOnlyConfig(bits=bits, scheme=scheme, granularity=granularity[0],
                              group_size=granularity[1], targets=tuple(sorted(targets)))
    quantized, _ = quantize_weights(MODEL, config)
    predicted = ew.predicted_size_bytes(MODEL, config)
    assert predicted == ew.state_dict_nbytes(quantized)
    # names, pickle and zip headers, 64-byte alignment: a few hundred bytes per tensor
    overhead = size_bytes(quantized) - predicted
    assert 0 < overhead < 600 * len(quantized.state_dict()) + 2000


def test_measure_caches_and_records_measured_and_predicted_sizes():
    calls = []

    def evaluate(model):
        calls.append(model)
        return gpt.perplexity(model, IDS, 16)

    s = ew.WeightSweep(MODEL, evaluate)
    config = ew.make_config(3, GROUPS)
    sizes = s.size(config)
    assert not calls  # sizes need no evaluation
    first = s.measure(config)
    assert (first.size_bytes, first.predicted_size_bytes) == sizes == s.size(config)
    assert s.measure(config) is first and len(calls) == 1
    reference, _ = quantize_weights(MODEL, config)
    assert first.size_bytes == size_bytes(reference)
    assert first.predicted_size_bytes == ew.state_dict_nbytes(reference)
    assert first.quality["perplexity"] == pytest.approx(
        gpt.perplexity(reference, IDS, 16)["perplexity"], rel=1e-6)
    ref = s.reference()
    assert ref.config is None and ref.size_bytes == size_bytes(MODEL) and len(calls) == 2
    assert s.run([config, ew.make_config(8)])[0] is first and len(calls) == 3


def test_sweep_errors():
    with pytest.raises(TypeError, match=r"evaluate is a int: expected a callable"):
        ew.WeightSweep(MODEL, 3)
    with pytest.raises(TypeError, match=r"config is a int: expected a WeightOnlyConfig"):
        sweep().quantized(4)


# ------------------------------------------------------------------ quality functions


def test_gpt_quality_uses_the_first_windows():
    full = ew.gpt_quality(IDS, 16)(MODEL)["perplexity"]
    assert full == pytest.approx(gpt.perplexity(MODEL, IDS, 16)["perplexity"])
    subset = ew.gpt_quality(IDS, 16, n_windows=3)(MODEL)
    assert subset["perplexity"] == pytest.approx(
        gpt.perplexity(MODEL, IDS[:49], 16)["perplexity"])
    with pytest.raises(ValueError, match=r"n_windows=0: expected a positive integer"):
        ew.gpt_quality(IDS, 16, n_windows=0)


def test_minilm_quality_passes_the_reference_and_keeps_the_scores(monkeypatch):
    import quantbook.evaluate

    seen = {}

    def fake(model, tokenizer, reference=None):
        seen.update(model=model, tokenizer=tokenizer, reference=reference)
        return {"pearson": 0.5, "spearman": 0.4, "n_pairs": 1225, "embeddings": None,
                "cosine_mean": 0.9, "cosine_min": 0.8}

    monkeypatch.setattr(quantbook.evaluate, "evaluate_minilm", fake)
    reference = torch.ones(50, 384)
    result = ew.minilm_quality("tok", reference)("model")
    assert result == {"pearson": 0.5, "spearman": 0.4, "cosine_mean": 0.9, "cosine_min": 0.8}
    assert seen["reference"] is reference and seen["tokenizer"] == "tok"


# ------------------------------------------------------------------ figures


def test_plot_vs_bits_draws_the_curves_and_the_reference():
    fig = ew.plot_vs_bits({"a": [1, 2, 3, 4, 5]}, "y", "t", reference=0.5, logy=True)
    ax = fig.axes[0]
    line, ref = ax.get_lines()
    assert list(line.get_xdata()) == list(ew.BITS) and list(line.get_ydata()) == [1, 2, 3, 4, 5]
    assert ref.get_label() == "float" and ax.get_yscale() == "log"
    plt.close(fig)


def test_plot_group_bars_heights():
    values = {"attention": {4: 1.0, 2: 3.0}, "head": {4: 2.0}}
    fig = ew.plot_group_bars(values, "y", "t")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]  # 4 bits first, then 2 bits
    assert heights[:3] == [1.0, 2.0, 3.0] and heights[3] != heights[3]  # missing: NaN
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attention", "head"]
    plt.close(fig)


# ------------------------------------------------------------------ views and explorers


def test_view_html_escapes_the_sample_and_states_the_ratio():
    ref = ew.Measurement(None, 4000, 3990, {"perplexity": 2.0})
    m = ew.Measurement(ew.make_config(4), 1000, 990, {"perplexity": 2.5})
    text = ew.view_html(m, ref, "a <b> & c", "ppl")
    assert "int4 per channel, attention + ffn" in text and "4.00x smaller" in text
    assert "a &lt;b&gt; &amp; c" in text and "ppl 2.500 (float 2.000)" in text


def test_explorer_follows_every_control():
    s = sweep(cache_weights=True)
    box = ew.explorer(s, TOKENIZER, "ppl", prompt="the ", n_chars=12)
    bits, groups, granularity, view = box.children
    label, *group_buttons = groups.children
    assert label.value == "groups" and [b.description for b in group_buttons] == list(GROUPS)
    assert [b.value for b in group_buttons] == [True, True, False, False]
    assert box.measurement.config == ew.make_config(4)
    bits.value = 3
    group_buttons[GROUPS.index("head")].value = True
    granularity.value = 2  # group 32
    config = ew.make_config(3, ("attention", "ffn", "head"), "group", 32)
    assert box.measurement is s.measure(config)
    reference, _ = quantize_weights(MODEL, config)
    expected = gpt.sample(reference, TOKENIZER, "the ", 12, seed=0)
    assert box.samples[config] == expected and html.escape(expected) in view.value
    for button in group_buttons:
        button.value = False
    assert "Choose at least one module group" in view.value


def test_static_explorer_has_one_view_per_bit_width():
    s = sweep()
    box = ew.static_explorer(s, TOKENIZER, "ppl", prompt="the ", n_chars=8, bits=(8, 2))
    slider, stack = box.children
    assert list(slider.options) == ["8 bits", "2 bits"]
    assert all(isinstance(v, widgets.HTML) for v in stack.children)
    assert "int2 per channel" in stack.children[1].value
    assert isinstance(s.quantized(ew.make_config(2)).blocks[0].attn.q_proj, PackedLinear)
