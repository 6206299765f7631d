"""Tests for quantbook.explore_weights against quantize_weight_only, torch.save and hand counts."""

import html

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from quantbook import explore_weights as ew  # noqa: E402
from quantbook import gpt  # noqa: E402
from quantbook.gpt import GPT, CharTokenizer, GPTConfig  # noqa: E402
from quantbook.measure import size_bytes, tensor_bytes  # noqa: E402
from quantbook.methods import (  # noqa: E402
    PackedLinear,
    WeightOnlyConfig,
    quantize_weight_only,
)
from quantbook.records import BenchRecord  # noqa: E402
from quantbook.sweep import Sweep, Workload  # noqa: E402
from quantbook.targets import GROUPS  # noqa: E402

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


TEXT = "the cat sat on the mat and the dog sat on the log. " * 8
TOKENIZER = CharTokenizer.from_text(TEXT)
IDS = TOKENIZER.encode(TEXT)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=16, n_layer=2, n_head=2,
                       n_embd=64)
    return GPT(config).eval()


MODEL = tiny_gpt()


def workload(evaluate=None, model=MODEL):
    return Workload("tiny", model, "perplexity", evaluate or ew.gpt_quality(IDS, 16))


def sweep(evaluate=None):
    return ew.weight_sweep(workload(evaluate))


def perplexity(model):
    return gpt.perplexity(model, IDS, 16)["perplexity"]


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------ configs and labels


def test_make_config_and_config_label():
    config = ew.make_config(4)
    assert config == WeightOnlyConfig(bits=4)  # symmetric, per channel, attention + ffn
    assert ew.config_label(config) == "int4 per channel, attention + ffn"
    grouped = ew.make_config(3, ["head"], "group", 32)
    assert (grouped.granularity, grouped.group_size, grouped.targets) == ("group", 32, ("head",))
    assert ew.config_label(grouped) == "int3 group32, head"
    assert ew.make_config(8, granularity="channel", group_size=32).group_size is None
    asymmetric = WeightOnlyConfig(bits=3, scheme="asymmetric", granularity="tensor",
                                  targets=("ffn",))
    assert ew.config_label(asymmetric) == "int3 per tensor asymmetric, ffn"
    assert [c[0] for c in ew.GRANULARITY_CHOICES] == ["per channel", "group 64", "group 32"]


# ------------------------------------------------------------------ the sweeps


@pytest.mark.parametrize("config", [
    ew.make_config(4),
    ew.make_config(2, GROUPS, "group", 32),
    ew.make_config(8, ("embeddings", "head")),
    WeightOnlyConfig(bits=3, scheme="asymmetric", targets=("ffn",)),
])
def test_weight_sweep_models_equal_quantize_weight_only(config):
    reference, _ = quantize_weight_only(MODEL, config)
    ours = sweep().quantized(config)
    assert_same_state(ours, reference)
    packed = [m for m in ours.modules() if isinstance(m, PackedLinear)]
    assert all(m.cache_weight for m in packed)
    assert not any(m.cache_weight for m in reference.modules() if isinstance(m, PackedLinear))
    ids = torch.tensor([IDS[:16]])
    torch.testing.assert_close(ours(ids)[0], reference(ids)[0], rtol=0, atol=0)
    if packed:
        assert packed[0]._cached_weight is not None  # kept after the first call
    torch.testing.assert_close(ours(ids)[0], reference(ids)[0], rtol=0, atol=0)


def test_weight_sweep_shares_packed_modules_and_leaves_the_model_float():
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    s = sweep()
    assert isinstance(s, Sweep)
    both = s.quantized(ew.make_config(4))
    attention_only = s.quantized(ew.make_config(4, ["attention"]))
    assert attention_only.blocks[0].attn.q_proj is both.blocks[0].attn.q_proj
    assert attention_only.blocks[0].mlp.fc_in.weight is MODEL.blocks[0].mlp.fc_in.weight
    assert len(s.packed) == 2 * 6  # 2 layers x (4 attention + 2 ffn), built once each
    assert all(type(m) is nn.Linear for m in (MODEL.blocks[0].attn.q_proj, MODEL.lm_head))
    after = MODEL.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    shared = ew.weight_sweep(workload(lambda m: 0.0), share=s)
    assert shared.quantized(ew.make_config(4)).blocks[1].mlp.fc_out is both.blocks[1].mlp.fc_out
    with pytest.raises(ValueError, match=r"share sweeps another model"):
        ew.weight_sweep(workload(model=tiny_gpt(1)), share=s)


def test_record_measures_once_against_a_fresh_quantization():
    calls = []

    def evaluate(model):
        calls.append(model)
        return perplexity(model)

    s = sweep(evaluate)
    config = ew.make_config(3, GROUPS)
    first = ew.record(s, config)
    assert isinstance(first, BenchRecord) and first.method == "int3 per channel, " + " + ".join(
        GROUPS)
    assert ew.record(s, config) is first and len(calls) == 2  # the float model, then config
    reference, _ = quantize_weight_only(MODEL, config)
    assert first.size_bytes == size_bytes(reference)
    assert first.value == pytest.approx(perplexity(reference), rel=1e-6)
    assert first.float_value == pytest.approx(perplexity(MODEL), rel=1e-6)


# ------------------------------------------------------------------ sizes


def test_size_rows_against_torch_save_and_tensor_bytes():
    sets = {"attention + ffn": ("attention", "ffn"), "head": ("head",)}
    calls = []
    s = sweep(lambda m: calls.append(m) or 1.0)
    rows = ew.size_rows(s, sets, bits=(8, 2))
    assert not calls  # sizes need no evaluation
    assert [(r["label"], r["bits"]) for r in rows] == [
        ("none (float32)", 32), ("attention + ffn", 8), ("attention + ffn", 2), ("head", 8),
        ("head", 2)]
    float_bytes = size_bytes(MODEL)
    assert rows[0]["size_bytes"] == float_bytes and rows[0]["config"] is None
    assert rows[0]["predicted_size_bytes"] == tensor_bytes(MODEL)
    for row in rows[1:]:
        reference, _ = quantize_weight_only(MODEL, row["config"])
        assert row["size_bytes"] == size_bytes(reference)
        assert row["predicted_size_bytes"] == tensor_bytes(reference)
        assert row["header_bytes"] == row["size_bytes"] - row["predicted_size_bytes"] > 0
        assert row["smaller"] == pytest.approx(float_bytes / size_bytes(reference))
        assert row["size_bytes"] == ew.record(s, row["config"]).size_bytes  # as its record
    # lm_head: Linear(64, vocab) at 2 bits per channel: vocab * 64 / 4 code bytes + vocab scales
    vocab = TOKENIZER.vocab_size
    assert rows[-1]["predicted_size_bytes"] == (tensor_bytes(MODEL) - vocab * 64 * 4
                                                + vocab * 64 // 4 + vocab * 4)


def test_size_table_renders_the_rows():
    rows = ew.size_rows(sweep(), {"head": ("head",)}, bits=(4,))
    table = ew.size_table(rows)
    assert table.headers == ("groups quantized", "bits", "measured (bytes)",
                             "calculated (bytes)", "headers (bytes)", "smaller")
    head = rows[1]
    assert table.cells[1] == ("head", "4", f"{head['size_bytes']:,}",
                              f"{head['predicted_size_bytes']:,}", f"{head['header_bytes']:,}",
                              f"{head['smaller']:.2f}x")
    assert "<table" in table._repr_html_()


def test_bits_table_one_column_per_bit_width():
    table = ew.bits_table({"a": [1.0, 2.0], "b": {2: 0.12345}}, bits=(8, 2), digits=2,
                          header="set", caption="c")
    assert table.headers == ("set", "8 bits", "2 bits") and table.caption == "c"
    assert table.cells == (("a", "1.00", "2.00"), ("b", "", "0.12"))
    with pytest.raises(ValueError, match=r"values\['a'\] holds 1 values for bits=\(8, 2\)"):
        ew.bits_table({"a": [1.0]}, bits=(8, 2))


# ------------------------------------------------------------------ quality


def test_gpt_quality_uses_the_first_windows():
    assert ew.gpt_quality(IDS, 16)(MODEL) == pytest.approx(perplexity(MODEL))
    subset = ew.gpt_quality(IDS, 16, n_windows=3)(MODEL)
    assert subset == pytest.approx(gpt.perplexity(MODEL, IDS[:49], 16)["perplexity"])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=rf"n_windows={bad!r}: expected a positive integer"):
            ew.gpt_quality(IDS, 16, n_windows=bad)


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


def _record(method, size, value):
    return BenchRecord(model="tiny", method=method, family="f", metric="perplexity",
                       value=value, float_value=2.0, size_bytes=size, size_ratio=size / 4000)


def test_view_html_escapes_the_sample_and_states_the_ratio():
    ref = _record("float32", 4000, 2.0)
    text = ew.view_html(_record("int4 <x>", 1000, 2.5), ref, "a <b> & c", "ppl")
    assert "<b>int4 &lt;x&gt;</b>" in text and "4.00x smaller" in text
    assert "a &lt;b&gt; &amp; c" in text and "ppl 2.500 (float 2.000)" in text


def test_explorer_follows_every_control():
    s = sweep()
    box = ew.explorer(s, TOKENIZER, "ppl", prompt="the ", n_chars=12)
    bits, groups, granularity, view = box.children
    assert [value for _, value in bits.options] == [2, 3, 4, 6, 8]  # ascending, as everywhere
    label, *group_buttons = groups.children
    assert label.value == "groups" and [b.description for b in group_buttons] == list(GROUPS)
    assert [b.value for b in group_buttons] == [True, True, False, False]
    assert box.record.method == "int4 per channel, attention + ffn"
    assert box.record.value == pytest.approx(
        perplexity(quantize_weight_only(MODEL, WeightOnlyConfig(bits=4))[0]), rel=1e-6)
    bits.value = 3
    group_buttons[GROUPS.index("head")].value = True
    granularity.value = 2  # group 32
    config = ew.make_config(3, ("attention", "ffn", "head"), "group", 32)
    assert box.record is ew.record(s, config)
    reference, _ = quantize_weight_only(MODEL, config)
    expected = gpt.sample(reference, TOKENIZER, "the ", 12, seed=0)
    assert box.samples[config] == expected and html.escape(expected) in view.value
    for button in group_buttons:
        button.value = False
    assert "Choose at least one module group" in view.value


def test_static_explorer_has_one_view_per_bit_width():
    s = sweep()
    box = ew.static_explorer(s, TOKENIZER, "ppl", prompt="the ", n_chars=8, bits=(8, 2))
    slider, stack = box.children
    assert list(slider.options) == ["2 bits", "8 bits"]  # ascending, whatever the order given
    assert (slider.value, stack.selected_index) == ("8 bits", 1)  # start_bits=8 by default
    assert all(isinstance(v, widgets.HTML) for v in stack.children)
    assert [r.method for r in box.records] == ["int2 per channel, attention + ffn",
                                               "int8 per channel, attention + ffn"]
    reference, _ = quantize_weight_only(MODEL, WeightOnlyConfig(bits=2))
    sample = gpt.sample(reference, TOKENIZER, "the ", 8, seed=0)
    assert html.escape(sample) in stack.children[0].value
    assert f"ppl {perplexity(reference):.3f}" in stack.children[0].value
    start = ew.static_explorer(s, TOKENIZER, "ppl", prompt="the ", n_chars=8, bits=(8, 2),
                               start_bits=2)
    assert start.children[0].value == "2 bits" and start.children[1].selected_index == 0
    with pytest.raises(ValueError, match=r"start_bits=4 is not one of bits=\[2, 8\]: start at"):
        ew.static_explorer(s, TOKENIZER, "ppl", bits=(8, 2), start_bits=4)
