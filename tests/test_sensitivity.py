import pytest
import torch
from torch import nn

from quantbook.gpt import GPT, GPTConfig
from quantbook.methods.dynamic import DynamicConfig, quantize_dynamic_model
from quantbook.methods.sensitivity import mixed_precision_plan, sensitivity_scan
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
    assert [row["module"] for row in scan][0] == OUTLIER
    assert len(scan) == 4 and scan == sorted(scan, key=lambda r: r["drop"], reverse=True)
    # each row is the metric of the model with that one module quantized, and nothing else
    alone, _ = quantize_dynamic_model(model, DynamicConfig(), modules=[OUTLIER])
    assert scan[0]["metric"] == evaluate(alone)
    assert scan[0]["drop"] == pytest.approx(-evaluate(alone))
    assert all(row["drop"] >= 0 for row in scan)


def test_scan_lower_is_better_and_custom_quantizer(model, evaluate):
    calls = []

    def quantize_one(m, name):
        calls.append(name)
        return quantize_dynamic_model(m, DynamicConfig(granularity="channel"), modules=[name])

    rows = sensitivity_scan(model, lambda m: -evaluate(m), [OUTLIER, "lm_head"], quantize_one,
                            higher_is_better=False)
    assert calls == [OUTLIER, "lm_head"]
    assert all(row["drop"] >= 0 for row in rows)  # MSE went up: a positive drop
    with pytest.raises(ValueError, match="modules is empty"):
        sensitivity_scan(model, evaluate, [])


def test_plan_and_apply(scan, model, evaluate):
    assert mixed_precision_plan(scan, 1) == (OUTLIER,)
    assert mixed_precision_plan(scan, 0) == ()
    assert len(mixed_precision_plan(scan, 0.5)) == 2
    assert len(mixed_precision_plan(scan, 0.3)) == 2  # ceil(1.2)
    assert len(mixed_precision_plan(list(reversed(scan)), 1.0)) == 4
    plan = mixed_precision_plan(scan, 1)
    mixed, report = quantize_dynamic_model(model, DynamicConfig(), exclude=plan)
    assert type(mixed.get_submodule(OUTLIER)) is nn.Linear
    assert (OUTLIER, "excluded: kept in float on request") in report.skipped
    full, _ = quantize_dynamic_model(model, DynamicConfig())
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
