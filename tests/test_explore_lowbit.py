"""The chapter's helpers: configs, the loss, calibration windows, figures and explorers."""

import math

import pytest
import torch
from conftest import make_gpt

from quantbook import explore_lowbit as lowbit
from quantbook.gpt import perplexity
from quantbook.methods.awq import AWQConfig
from quantbook.methods.gptq import GPTQConfig
from quantbook.methods.packed import PackedLinear
from quantbook.methods.weight_only import WeightOnlyConfig
from quantbook.sweep import Workload
from quantbook.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


def fake_results():
    rows = [{"method": m, "bits": b, "group_size": g, "value": 4.5 * (1 + k / (b * g)),
             "size_bytes": 1000 * b + g} for b in (2, 3, 4) for g in (32, 128)
            for k, m in enumerate(("RTN", "GPTQ", "AWQ"), start=1)]
    plan = [["blocks.0.mlp.fc_in", 8], ["blocks.1.mlp.fc_in", 2], ["lm_head", 4]]
    return {"gpt": {"float": {"value": 4.5}, "rows": rows},
            "calibration": {"amount": [{"tokens": 128, "GPTQ": 4.7, "AWQ": 4.9},
                                       {"tokens": 512, "GPTQ": 4.6, "AWQ": 4.85}]},
            "mixed": {"plans": {"3": {"plan": plan}}}}


def test_method_config():
    targets = ("attention", "ffn")
    assert lowbit.method_config("RTN", 3, 32, targets) == WeightOnlyConfig(
        bits=3, granularity="group", group_size=32, targets=targets)
    assert lowbit.method_config("GPTQ", 2, 128, targets) == GPTQConfig(
        bits=2, group_size=128, act_order=True, targets=targets)
    assert isinstance(lowbit.method_config("AWQ", 4, 32, targets), AWQConfig)
    with pytest.raises(ValueError, match="method='SpQR' is unknown"):
        lowbit.method_config("SpQR", 3, 32, targets)


def test_quantize_lowbit_dispatches():
    model = make_gpt()
    batches = [torch.randint(0, 64, (2, 16))]
    for method in lowbit.METHOD_CHOICES:
        config = lowbit.method_config(method, 4, 16, ("ffn",))
        quantized, report = lowbit.quantize_lowbit(model, config, batches)
        assert report.label == config.label
        assert isinstance(quantized.blocks[0].mlp.fc_in, PackedLinear)


def test_gpt_loss_is_log_perplexity_of_one_window():
    model = make_gpt()
    ids = torch.randint(0, 64, (17,))
    expected = math.log(perplexity(model, ids, 16)["perplexity"])
    assert lowbit.gpt_loss(model, [ids[None]]) == pytest.approx(expected, rel=1e-5)


def test_windows_are_distinct_and_deterministic():
    ids = torch.arange(1000)
    batches = lowbit.windows(ids, 20, 16, seed=3, batch_size=8)
    assert [b.shape for b in batches] == [(8, 16), (8, 16), (4, 16)]
    starts = torch.cat(batches)[:, 0]
    assert len(set(starts.tolist())) == 20
    assert torch.equal(torch.cat(lowbit.windows(ids, 20, 16, seed=3)), torch.cat(batches))


def test_calibration_sets_use_one_tokenizer():
    from quantbook import data

    tokenizer = CharTokenizer.from_text(data.lee_split().train)
    sets = lowbit.calibration_sets(tokenizer, 32, n_windows=8)
    assert list(sets) == ["Lee training text", "movie reviews", "Python source",
                          "random tokens"]
    for batches in sets.values():
        assert torch.cat(batches).shape == (8, 32)
        assert int(torch.cat(batches).max()) < tokenizer.vocab_size


def test_results_helpers(tmp_path):
    assert lowbit.increase(4.95, 4.5) == pytest.approx(10.0)
    with pytest.raises(FileNotFoundError, match="make lowbit"):
        lowbit.load_results(tmp_path / "none.json")


def test_bench_configs():
    gpt = Workload("gpt", None, "perplexity", None, linear_targets=lowbit.GPT_TARGETS)
    configs = lowbit.bench_configs(gpt)
    assert {"GPTQ int4 group32 act-order", "GPTQ int3 group32 act-order", "AWQ int4 group32",
            "AWQ int3 group32"} <= set(configs)
    assert configs["AWQ int4 group32"].targets == lowbit.GPT_TARGETS
    minilm = Workload("minilm", None, "lee_pearson", None, linear_targets=lowbit.MINILM_TARGETS)
    assert set(lowbit.bench_configs(minilm)) == {
        "GPTQ int4 group32 act-order", "GPTQ int3 group32 act-order", "AWQ int4 group32",
        "AWQ int3 group32"}
    with pytest.raises(TypeError, match=r"workload is a str: expected a Workload, e\.g\. "
                                        r"quantbook\.bench\.workload\(\"gpt\"\)"):
        lowbit.bench_configs("gpt")


def test_layer_errors_rank_the_methods():
    torch.manual_seed(0)
    X = torch.randn(512, 64) @ (torch.eye(64) + 0.3 * torch.randn(64, 64))
    W = torch.randn(16, 64)
    errors = lowbit.layer_errors(W, X, 3, 32)
    assert set(errors) == {"RTN", "GPTQ", "AWQ"}
    assert errors["GPTQ"] < errors["RTN"] and errors["AWQ"] <= errors["RTN"] * 1.0001
    assert max(lowbit.layer_errors(W, X, 8, 32).values()) < 1e-3


def test_layer_inputs_and_live_explorer():
    model = make_gpt()
    batches = [torch.randint(0, 64, (2, 16))]
    assert lowbit.layer_inputs(model, "blocks.1.mlp.fc_out", batches).shape == (32, 128)
    box = lowbit.live_explorer(model, batches, start_layer="blocks.1.mlp.fc_in")
    layer, bits, group, out = box.children
    assert (layer.value, bits.value, group.value) == ("blocks.1.mlp.fc_in", 3, 32)
    assert (bits.min, bits.max) == (2, 8)  # ascending, as every bit-width control
    box = lowbit.live_explorer(model, batches, start_layer="blocks.1.mlp.fc_out", start_bits=4,
                               start_group_size=128)
    assert (box.children[1].value, box.children[2].value) == (4, 128)
    assert out.value.startswith("RTN: relative output error")


def test_figures_and_static_explorer():
    results = fake_results()
    for fig in (lowbit.sweep_figure(results), lowbit.bits_figure(results, 3),
                lowbit.calibration_figure(results), lowbit.plan_figure(results)):
        assert fig.axes[0].get_title()
    qat = lowbit.qat_figure({"eval_step": [30, 60], "eval_ppl_8k": [6.0, 5.5],
                             "ppl_rtn_8k": 8.7})
    assert list(qat.axes[0].lines[0].get_xdata()) == [0, 30, 60]
    box = lowbit.static_explorer(results)
    assert box.children[0].options == ("2 bits", "3 bits", "4 bits")
    assert box.children[0].value == "3 bits" and box.children[1].selected_index == 1
    alt = box.children[1].children[0].tooltip
    assert alt.startswith("Bar chart of the GPT's perplexity increase over float32 at 2 bits")
    rtn = lowbit.increase(next(r["value"] for r in results["gpt"]["rows"]
                               if (r["method"], r["bits"], r["group_size"]) == ("RTN", 2, 32)),
                          4.5)
    assert f"group 32: RTN {rtn:.1f} %" in alt
    with pytest.raises(ValueError, match=r"start_bits=8 is not one of \(2, 3, 4\): start at"):
        lowbit.static_explorer(results, start_bits=8)
