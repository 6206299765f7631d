"""Tests for quantbook.profiling: known sleeps, and the operators each method dispatches."""

import copy
import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbook import profiling
from quantbook.methods import DynamicConfig, StaticConfig, quantize_dynamic, quantize_static
from quantbook.quiet import silence_known_noise


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))


def test_time_breakdown_attributes_known_sleeps():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    linear = model[0]

    def slow_forward(x):
        time.sleep(0.06)
        return F.linear(x, linear.weight, linear.bias)

    linear.forward = slow_forward  # hooks still run around the instance's forward
    x = torch.randn(2, 4)

    def call():
        time.sleep(0.01)  # outside any module: counted as float ops
        model(x)

    # two rounds: their median is their mean, so the parts add up to the total exactly
    parts = profiling.time_breakdown({"slow": (model, call)}, repeats=2, warmup=1)["slow"]
    assert set(parts) == {"float Linear", "float ops", "total"}
    # sleeps give lower bounds; a busy machine only adds, so no upper bounds in milliseconds
    assert parts["float Linear"] >= 60 and parts["float ops"] >= 10
    assert parts["float ops"] < parts["float Linear"]  # the Linear's 60 ms were not leaked
    assert math.isclose(parts["total"], parts["float Linear"] + parts["float ops"])
    assert not linear._forward_hooks and not linear._forward_pre_hooks


def test_time_breakdown_of_a_static_model_has_every_part(gpt, batches, ids):
    quantized, _ = quantize_static(gpt, StaticConfig(observer="minmax"), batches[:1])
    both = profiling.time_breakdown({"float": (gpt, lambda: gpt(ids)),
                              "static": (quantized, lambda: quantized(ids))}, repeats=1)
    assert set(both["float"]) == {"float Linear", "float ops", "total"}
    assert {"int8 Linear", "quantize", "dequantize", "float ops", "total"} <= set(both["static"])
    assert both["static"]["float Linear"] > 0  # lm_head is not among the default targets
    with pytest.raises(ValueError, match="repeats=0, warmup=1: need repeats >= 1"):
        profiling.time_breakdown({"static": (quantized, lambda: None)}, repeats=0)


def test_operator_log_sees_fused_and_unfused_kernels():
    with warnings.catch_warnings():
        silence_known_noise()
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(48, 40)).eval()
    eager, _ = quantize_dynamic(float_model, DynamicConfig(modules=("0",)))
    torchao_model = copy.deepcopy(float_model)
    quantize_(torchao_model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    x = torch.randn(2, 3, 48)
    assert profiling.operator_log(lambda: float_model(x)) == ["aten::linear"]
    assert profiling.operator_log(lambda: eager(x))[0] == "quantized::linear_dynamic"
    ops = profiling.operator_log(lambda: torchao_model(x))
    assert "aten::_int_mm" in ops and "torchao::quantize_affine" in ops and len(ops) > 10
    assert profiling.operator_log(lambda: None) == []


def test_time_breakdown_of_a_dynamic_model_names_its_linears(gpt, ids):
    quantized, report = quantize_dynamic(gpt, DynamicConfig())
    parts = profiling.time_breakdown({"dynamic": (quantized, lambda: quantized(ids))},
                                     repeats=1, warmup=0)["dynamic"]
    assert {"dynamic int8 Linear", "float Linear", "float ops", "total"} == set(parts)
    assert parts["total"] >= parts["dynamic int8 Linear"] > 0
    assert profiling.time_breakdown({}) == {}


def test_time_breakdown_refuses_a_model_without_its_call(gpt):
    with pytest.raises(TypeError, match=r"calls\['float'\] is a GPT: expected a \(model, fn\) "
                                        r"pair"):
        profiling.time_breakdown({"float": gpt})
