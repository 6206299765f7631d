"""Tests for quantbook.explore_costs against hand-counted ledgers of tiny GPTs and BERTs."""

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from quantbook import explore_costs  # noqa: E402
from quantbook.accounting import ATTENTION_MATMULS, ROWS, group_accounting  # noqa: E402
from quantbook.gpt import GPT, GPTConfig  # noqa: E402
from quantbook.widgets import figure_png  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_gpt(n_layer=1, n_embd=8, vocab=11, n_head=2, block_size=4):
    return GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer,
                         n_head=n_head, n_embd=n_embd))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_linear_share_of_a_tiny_gpt_matches_hand_counts():
    model = tiny_gpt()
    # MACs per token at T=4 (hand): attention 4*8*8=256, ffn 2*8*32=512, head 8*11=88,
    # attention matmuls 2*4*8=64
    shares = explore_costs.linear_share(group_accounting(model, 4))
    assert shares["macs"] == pytest.approx((256 + 512 + 88) / (256 + 512 + 88 + 64))
    # parameters, counted independently: every parameter of an nn.Linear module
    linear = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear)
                 for p in m.parameters())
    assert shares["params"] == pytest.approx(linear / sum(p.numel() for p in model.parameters()))


def test_linear_share_of_a_bert_counts_no_head_and_no_embeddings():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    model = BertModel(config, add_pooling_layer=False)
    shares = explore_costs.linear_share(group_accounting(model, 4))
    # 4 attention Linears of 8x8 and the 8x32, 32x8 FFN: 256 + 512 MACs; matmuls 2*4*8 = 64
    assert shares["macs"] == pytest.approx(768 / (768 + 64))
    linear = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear)
                 for p in m.parameters())
    assert shares["params"] == pytest.approx(linear / sum(p.numel() for p in model.parameters()))


@settings(max_examples=15, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.integers(1, 3), head_dim=st.integers(1, 6),
       vocab=st.integers(2, 40))
def test_matmul_crossover_matches_the_closed_form(n_layer, n_head, head_dim, vocab):
    d = n_head * head_dim
    model = tiny_gpt(n_layer=n_layer, n_embd=d, vocab=vocab, n_head=n_head)
    # per layer 12 d^2 Linear MACs (4 d^2 attention + 8 d^2 ffn), plus the d*vocab head,
    # against 2 T d matmul MACs per layer
    assert explore_costs.matmul_crossover(model) == pytest.approx(6 * d + vocab / (2 * n_layer))


def test_at_the_crossover_matmuls_and_linears_cost_the_same():
    model = tiny_gpt(vocab=16)  # crossover 6*8 + 16/2 = 56, an integer
    t = int(explore_costs.matmul_crossover(model))
    shares = explore_costs.mac_share_sweep(model, [t])
    assert shares[ATTENTION_MATMULS][0] == pytest.approx(0.5)


def test_mac_share_sweep_sums_to_one_and_follows_the_formula():
    model = tiny_gpt(n_layer=2)
    seq_lens = [1, 4, 16, 64]
    sweep = explore_costs.mac_share_sweep(model, seq_lens)
    assert list(sweep) == list(ROWS)
    assert np.allclose(sum(sweep.values()), 1.0)
    t = np.array(seq_lens)
    linear = 2 * 12 * 8 * 8 + 8 * 11
    assert np.allclose(sweep[ATTENTION_MATMULS], 2 * 2 * t * 8 / (linear + 2 * 2 * t * 8))


def test_plot_cost_shares_draws_each_share_as_a_bar_width():
    model = tiny_gpt()
    costs = group_accounting(model, 4)
    fig = explore_costs.plot_cost_shares({"gpt": costs})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gpt: parameters", "gpt: MACs / token"]
    for row, cost in zip(ROWS, costs, strict=True):
        container = next(c for c in ax.containers if c.get_label() == row)
        params_bar, macs_bar = container.patches  # y order: parameters first, at the top
        assert params_bar.get_width() == pytest.approx(100 * cost.param_share)
        assert macs_bar.get_width() == pytest.approx(100 * cost.mac_share)
    assert "gpt 93%" in ax.get_title()  # (256 + 512 + 88) / 920 = 93.0%
    # ffn: 552 of 1,107 parameters (49.9%), 512 of 920 MACs (55.7%); attention 256/920 = 27.8%
    labels = [t.get_text() for t in ax.texts]
    assert {"50%", "56%", "28%"} <= set(labels)
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_plot_cost_shares_errors():
    costs = group_accounting(tiny_gpt(), 4)
    with pytest.raises(ValueError, match="costs_by_model is empty"):
        explore_costs.plot_cost_shares({})
    with pytest.raises(ValueError, match=r"quantities=\['flops'\] is not supported"):
        explore_costs.plot_cost_shares({"gpt": costs}, quantities=["flops"])
    with pytest.raises(ValueError, match=r"costs_by_model\['gpt'\] is not a ledger"):
        explore_costs.plot_cost_shares({"gpt": costs[:2]})
    with pytest.raises(ValueError, match="costs is not a ledger"):
        explore_costs.linear_share(costs[::-1])


def test_plot_matmul_share_sweep_plots_the_sweep_and_dashes_beyond_the_context():
    model = tiny_gpt()
    seq_lens = [2, 4, 8, 16]
    fig = explore_costs.plot_matmul_share_sweep({"gpt": model}, seq_lens, {"gpt": 4})
    solid, dashed = fig.axes[0].get_lines()[:2]
    expected = 100 * explore_costs.mac_share_sweep(model, seq_lens)[ATTENTION_MATMULS]
    assert list(solid.get_xdata()) == [2, 4]
    assert np.allclose(solid.get_ydata(), expected[:2])
    assert list(dashed.get_xdata()) == [4, 8, 16]  # starts at the last point inside
    assert np.allclose(dashed.get_ydata(), expected[1:])
    assert dashed.get_linestyle() == "--"
    assert dashed.get_markevery() == slice(1, None)  # no hollow marker over the solid point


def test_matmul_crossover_needs_attention():
    class NoAttention(nn.Module):  # a GPT layout with zero layers has no attention matmuls
        def __init__(self):
            super().__init__()
            self.tok_emb, self.pos_emb = nn.Embedding(3, 2), nn.Embedding(3, 2)
            self.blocks, self.lm_head = nn.ModuleList(), nn.Linear(2, 3)

    with pytest.raises(ValueError, match="no attention layer"):
        explore_costs.matmul_crossover(NoAttention())


def test_live_explorer_switches_to_the_view_of_the_chosen_setting():
    models = {"a": tiny_gpt(), "b": tiny_gpt(n_layer=2)}
    box = explore_costs.mac_share_explorer(models, [4, 64])
    assert list(box.model_picker.options) == ["a", "b", "all"]
    first = bytes(box.image.value)
    assert first.startswith(PNG_MAGIC)
    box.seq_len_slider.value = 64
    at_64 = bytes(box.image.value)
    assert at_64 != first
    box.model_picker.value = "a"
    assert bytes(box.image.value) not in (first, at_64)
    box.model_picker.value = "all"
    assert bytes(box.image.value) == at_64  # served from the cache, identical bytes
    assert box.image.tooltip.startswith("Stacked bars, one per model, of the share of the "
                                        "multiply-accumulates") and "T = 64. a: " in \
        box.image.tooltip
    assert explore_costs.mac_share_explorer(models, [4], model="b").model_picker.value == "b"
    with pytest.raises(ValueError, match=r"model='c' is not one of the choices \['a', 'b', "
                                         r"'all'\]: start at one of them"):
        explore_costs.mac_share_explorer(models, [4], model="c")


def test_static_explorer_has_one_linked_view_per_sequence_length():
    box = explore_costs.static_mac_share_explorer({"a": tiny_gpt()}, [4, 16, 64])
    slider, stack = box.children
    assert list(slider.options) == ["T = 4", "T = 16", "T = 64"]
    assert len(stack.children) == 3
    assert all(isinstance(v, widgets.Image) for v in stack.children)
    assert box.link.source == (slider, "index")
    assert (slider.value, stack.selected_index) == ("T = 4", 0)
    assert ["at sequence length T = 4. a:" in stack.children[0].tooltip,
            "T = 16. a:" in stack.children[1].tooltip] == [True, True]


def test_explorers_start_at_the_chosen_sequence_length():
    models = {"a": tiny_gpt()}
    box = explore_costs.static_mac_share_explorer(models, [4, 16, 64], seq_len=16)
    slider, stack = box.children
    assert (slider.value, stack.selected_index) == ("T = 16", 1)
    live = explore_costs.mac_share_explorer(models, [4, 16, 64], seq_len=64)
    assert live.seq_len_slider.value == 64
    # the view on show is the one drawn for T = 64, not the first length's
    moved = explore_costs.mac_share_explorer(models, [4, 16, 64])
    first = bytes(moved.image.value)
    moved.seq_len_slider.value = 64
    assert bytes(live.image.value) == bytes(moved.image.value) != first


@pytest.mark.parametrize("seq_len", [32, 16.0, True])
def test_explorers_start_only_at_a_length_they_offer(seq_len):
    match = rf"seq_len={seq_len!r} is not one of seq_lens=\[4, 16\]"
    with pytest.raises(ValueError, match=match):
        explore_costs.mac_share_explorer({"a": tiny_gpt()}, [4, 16], seq_len=seq_len)
    with pytest.raises(ValueError, match=match):
        explore_costs.static_mac_share_explorer({"a": tiny_gpt()}, [4, 16], seq_len=seq_len)


@pytest.mark.parametrize("seq_lens, match", [
    ([], r"seq_lens=\[\] is not supported"),
    ([0, 4], r"seq_lens=\[0, 4\] is not supported: pass a non-empty list of integers >= 1"),
    ([4, 4.5], r"seq_lens=\[4, 4.5\] is not supported"),
    ([64, 4], r"seq_lens=\[64, 4\] must be strictly increasing"),
])
def test_seq_lens_errors(seq_lens, match):
    with pytest.raises(ValueError, match=match):
        explore_costs.mac_share_sweep(tiny_gpt(), seq_lens)


def test_explorer_needs_models():
    with pytest.raises(ValueError, match="models is empty"):
        explore_costs.mac_share_explorer({}, [4])
