"""The outliers chapter's helpers: statistics against hand-computed cases, remedies, results."""

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook import explore_outliers as eo
from quantbook.methods import DynamicConfig
from quantbook.methods.float_output import StaticInt8Linear, input_qparams
from quantbook.methods.smoothquant import SmoothQuantConfig, smooth_scales, weight_col_absmax
from quantbook.records import BenchRecord
from quantbook.sweep import Workload

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


def test_outlier_ratio_is_top_over_median():
    assert eo.outlier_ratio(torch.tensor([1.0, 2.0, 40.0])) == (20.0, 2)


def test_activation_absmax_records_both_sides_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
    batches = [torch.tensor([[1.0, -3.0]]), torch.tensor([[-2.0, 1.0]])]
    stats = eo.activation_absmax(model, batches)
    torch.testing.assert_close(stats[("0", "input")], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(stats[("0", "output")], torch.tensor([4.0, 3.0]))
    assert not model[0]._forward_hooks


def test_role_rows_follow_a_planted_outlier(batches):
    model = make_gpt()
    with torch.no_grad():
        model.blocks[1].ln_2.weight[7] = 50.0
    rows = eo.role_rows(eo.activation_absmax(model, batches), "gpt", n_layers=2)
    assert len(rows) == 2 * len(eo.ROLES["gpt"])
    worst = {r["role"]: r for r in eo.worst_by_role(rows)}
    assert worst["FFN input"]["layer"] == 1 and worst["FFN input"]["channel"] == 7
    assert worst["FFN input"]["ratio"] > 10 > worst["q/k/v input"]["ratio"]
    fig = eo.ratio_figure(rows, "title")
    assert len(fig.axes[0].lines) == len(eo.ROLES["gpt"])


def test_fake_w8a8_matches_the_int8_kernel():
    torch.manual_seed(0)
    linear, x = nn.Linear(32, 8), torch.randn(4, 10, 32)
    kernel = StaticInt8Linear(linear, *input_qparams(x.min(), x.max()))(x)
    with torch.no_grad():
        torch.testing.assert_close(eo.fake_w8a8(x, linear), kernel, atol=1e-4, rtol=1e-4)


def test_layer_sqnr_rises_when_a_planted_outlier_is_smoothed():
    torch.manual_seed(0)
    linear, x = nn.Linear(32, 8), torch.randn(256, 32)
    x[:, 5] *= 100.0
    sqnr = eo.layer_sqnr(x, linear, [None, 0.5, 0.9])
    assert sqnr[0.9] > sqnr[None] + 6  # one more bit's worth at least


def test_torchao_smoothing_factors_equal_ours():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    inputs = [torch.randn(2, 5, 16) * torch.linspace(0.5, 20, 16) for _ in range(2)]
    module, factors = eo.torchao_smoothquant(linear, inputs, alpha=0.8)
    absmax = torch.cat([x.reshape(-1, 16) for x in inputs]).abs().amax(0)
    ours = smooth_scales(absmax, weight_col_absmax([linear]), 0.8)
    torch.testing.assert_close(factors, ours, rtol=1e-5, atol=0)
    with torch.no_grad():
        reference, got = linear(inputs[0]), module(inputs[0].reshape(-1, 16))
    cosine = nn.functional.cosine_similarity(reference.reshape(-1, 8), got, dim=-1)
    assert float(cosine.min()) > 0.99


def test_quantize_remedy_dispatches_to_the_chapter_methods_and_the_book(gpt, batches):
    _, report = eo.quantize_remedy(gpt, SmoothQuantConfig(), batches)
    assert report.family == SmoothQuantConfig.family
    _, report = eo.quantize_remedy(gpt, DynamicConfig(), batches)
    assert report.family == DynamicConfig.family


def test_bench_configs_cover_the_workloads_linears(gpt):
    workload = Workload("gpt", gpt, "perplexity", evaluate=lambda m: 1.0,
                        linear_targets=("attention", "ffn", "head"))
    configs = eo.bench_configs(workload)
    assert list(configs) == ["static int8, float outputs", "SmoothQuant a=0.9, static int8",
                             "LLM.int8() decomposition, static int8",
                             "PEG (6 groups), static int8"]
    assert all(c.targets == ("attention", "ffn", "head") for c in configs.values())
    assert all(type(c) in eo.REMEDIES for c in configs.values())


def test_results_round_trip(tmp_path):
    record = BenchRecord(model="minilm", method="m", family="f", metric="lee_pearson",
                         value=0.65, float_value=0.66, size_bytes=10, size_ratio=0.5,
                         secondary={"cosine_mean": 0.99})
    path = tmp_path / "r.json"
    eo.save_results(path, [record], spike={"high": {"mse": 1.5}})
    extras, records = eo.load_results(path)
    assert records == [record] and extras["spike"]["high"]["mse"] == 1.5
    assert "<b>met</b>" in eo.result_html(record, float_value=0.655)
    with pytest.raises(FileNotFoundError, match="make outliers"):
        eo.load_results(tmp_path / "missing.json")
