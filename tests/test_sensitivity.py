"""Tests for quantbook.methods.sensitivity: a planted outlier layer must rank first."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from quantbook.gpt import GPT, GPTConfig
from quantbook.methods import (
    DynamicConfig,
    StaticConfig,
    WeightOnlyConfig,
    quantize_dynamic,
    quantize_weight_only,
)
from quantbook.methods.sensitivity import Sensitivity, mixed_precision_plan, sensitivity_scan
from quantbook.targets import list_targets

OUTLIER = "blocks.1.mlp.fc_out"


@pytest.fixture(scope="module")
def model():
    """A tiny GPT whose block-1 MLP dominates the output and has one outlier weight.

    With the outlier, the per-tensor int8 step is 50 / 127.5 = 0.39 for weights of std 1: that
    layer is quantized far more coarsely than the others.
    """
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        weight = gpt.get_submodule(OUTLIER).weight
        weight.mul_(1.0 / weight.std())  # std 1: this layer's output dominates the residual
        weight[0, 0] = 50.0
    return gpt


@pytest.fixture(scope="module")
def evaluate(model):
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        reference = model(ids)[0]

    def negative_mse(m):  # higher is better; 0 for the float model
        with torch.no_grad():
            return -float(((m(ids)[0] - reference) ** 2).mean())

    return negative_mse


@pytest.fixture(scope="module")
def scan(model, evaluate):
    return sensitivity_scan(model, evaluate, list_targets(model)["ffn"])


def test_scan_ranks_the_outlier_layer_first(scan, model, evaluate):
    assert all(isinstance(row, Sensitivity) for row in scan)
    assert [row.module for row in scan][0] == OUTLIER
    assert len(scan) == 4 and scan == sorted(scan, key=lambda r: r.drop, reverse=True)
    assert {row.module for row in scan} == set(list_targets(model)["ffn"])
    # each row is the metric of the model with that one module quantized, and nothing else
    alone, report = quantize_dynamic(model, DynamicConfig(modules=(OUTLIER,)))
    assert report.converted == (OUTLIER,)
    assert scan[0].metric == evaluate(alone)
    assert scan[0].drop == pytest.approx(-evaluate(alone))
    assert all(row.drop >= 0 for row in scan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scan[0].drop = 0.0


def test_the_float_model_is_never_modified(model, evaluate):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sensitivity_scan(model, evaluate, [OUTLIER])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.get_submodule(OUTLIER)) is nn.Linear


def test_scan_lower_is_better_with_another_method(model, evaluate, monkeypatch):
    from quantbook import methods

    calls = []
    real = methods.METHODS[WeightOnlyConfig]

    def quantize_one(m, config):
        calls.append((config.modules, config.exclude))
        return quantize_weight_only(m, config)

    monkeypatch.setitem(methods.METHODS, WeightOnlyConfig, (quantize_one, real[1]))
    config = WeightOnlyConfig(bits=4, exclude=(OUTLIER,))  # exclude is dropped per module
    rows = sensitivity_scan(model, lambda m: -evaluate(m), [OUTLIER, "lm_head"], config,
                            higher_is_better=False)
    assert calls == [((OUTLIER,), ()), (("lm_head",), ())]  # the config's own method
    assert all(row.drop >= 0 for row in rows)  # MSE went up: a positive drop
    assert rows[0].module == OUTLIER


def test_a_single_name_and_progress(model, evaluate):
    seen = []
    rows = sensitivity_scan(model, evaluate, "lm_head",
                            progress=lambda done, total: seen.append((done, total)))
    assert [row.module for row in rows] == ["lm_head"] and seen == [(1, 1)]


def test_a_layer_that_gives_nan_ranks_as_the_most_harmful(model, evaluate):
    def nan_when(name):
        def metric(m):
            if type(m.get_submodule(name)) is not nn.Linear:
                return float("nan")
            return evaluate(m)
        return metric

    modules = list_targets(model)["ffn"]
    rows = sensitivity_scan(model, nan_when("blocks.0.mlp.fc_in"), modules)
    assert rows[0].module == "blocks.0.mlp.fc_in"  # above the planted outlier
    assert math.isnan(rows[0].metric) and rows[0].drop == math.inf
    assert rows[1].module == OUTLIER
    lower = sensitivity_scan(model, lambda m: -nan_when(OUTLIER)(m), modules,
                             higher_is_better=False)
    assert lower[0].module == OUTLIER and lower[0].drop == math.inf
    assert mixed_precision_plan(rows, 1) == ("blocks.0.mlp.fc_in",)


def test_scan_errors(model, evaluate):
    with pytest.raises(ValueError, match=r"modules is empty: pass the names of the modules to "
                                         r"scan, e\.g\. quantbook\.targets\.list_targets"):
        sensitivity_scan(model, evaluate, [])
    with pytest.raises(ValueError, match=r"evaluate_fn\(model\) is NaN for the float model: fix "
                                         r"the evaluation before ranking layers by it"):
        sensitivity_scan(model, lambda m: float("nan"), [OUTLIER])
    with pytest.raises(TypeError, match=r"config is a dict: expected a method's config such as "
                                        r"DynamicConfig\(\)"):
        sensitivity_scan(model, evaluate, [OUTLIER], {"granularity": "tensor"})
    with pytest.raises(ValueError, match=r"modules names \['nope'\], which are not submodules"):
        sensitivity_scan(model, evaluate, ["nope"])


def test_an_evaluate_fn_that_returns_a_dict_is_refused_clearly(model, evaluate):
    with pytest.raises(TypeError, match=r"evaluate_fn\(model\) returned a dict: return one "
                                        r"number"):
        sensitivity_scan(model, lambda m: {"mse": evaluate(m)}, [OUTLIER])


def test_a_config_of_another_method_uses_that_method(model, evaluate):
    rows = sensitivity_scan(model, evaluate, [OUTLIER], WeightOnlyConfig(bits=4))
    assert rows[0].module == OUTLIER


def test_a_calibrating_method_gets_its_batches(model, evaluate):
    batches = [torch.randint(0, 64, (2, 16))]
    rows = sensitivity_scan(model, evaluate, [OUTLIER], StaticConfig(observer="minmax"),
                            batches=batches)
    assert rows[0].module == OUTLIER


def test_plan_and_apply(scan, model, evaluate):
    assert mixed_precision_plan(scan, 1) == (OUTLIER,)
    assert mixed_precision_plan(scan, 0) == ()
    assert len(mixed_precision_plan(scan, 0.5)) == 2
    assert len(mixed_precision_plan(scan, 0.3)) == 2  # ceil(1.2)
    assert len(mixed_precision_plan(list(reversed(scan)), 1.0)) == 4
    assert mixed_precision_plan(reversed(scan), 2) == tuple(r.module for r in scan[:2])
    plan = mixed_precision_plan(scan, 1)
    mixed, report = quantize_dynamic(model, dataclasses.replace(DynamicConfig(), exclude=plan))
    assert type(mixed.get_submodule(OUTLIER)) is nn.Linear
    assert (OUTLIER, "excluded: kept in float on request") in report.skipped
    full, _ = quantize_dynamic(model, DynamicConfig())
    assert evaluate(mixed) > evaluate(full)


@pytest.mark.parametrize(
    ("keep_float", "error", "message"),
    [
        (5, ValueError, r"keep_float=5 is out of range: choose 0\.\.4"),
        (-1, ValueError, r"keep_float=-1 is out of range"),
        (1.5, ValueError, r"keep_float=1\.5 is out of range: a fraction must be in \(0, 1\]"),
        (0.0, ValueError, r"keep_float=0\.0 is out of range"),
        (True, TypeError, r"keep_float=True is not supported"),
        ("2", TypeError, r"keep_float='2' is not supported"),
    ],
)
def test_plan_errors(scan, keep_float, error, message):
    with pytest.raises(error, match=message):
        mixed_precision_plan(scan, keep_float)


def test_plan_refuses_rows_that_are_not_sensitivities():
    with pytest.raises(TypeError, match=r"scan holds dict rows: expected the Sensitivity rows "
                                        r"that sensitivity_scan returns"):
        mixed_precision_plan([{"module": "lm_head", "drop": 0.1}], 1)
