"""Mixed bit widths: the knapsack against brute force, the greedy plan, applying a plan."""

import itertools
import random

import pytest
import torch
from conftest import make_gpt

from quantbook import measure
from quantbook.explore_lowbit import gpt_loss
from quantbook.methods.mixed import (
    MixedConfig,
    bit_costs,
    module_bytes,
    plan_bytes,
    plan_greedy,
    plan_knapsack,
    quantize_mixed,
)
from quantbook.methods.packed import PackedLinear
from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weight_only


def random_instance(seed, n_modules=4, choices=(2, 3, 4, 8)):
    rng = random.Random(seed)
    sizes, costs = {}, {}
    for i in range(n_modules):
        rows = rng.choice([8, 16, 32])
        sizes[f"m{i}"] = {b: rows * 32 * b // 8 + 4 * rows for b in choices}
        drops = sorted((rng.random() for _ in choices), reverse=True)
        costs[f"m{i}"] = dict(zip(choices, drops, strict=True))
    return costs, sizes


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_is_optimal_and_greedy_is_feasible(seed):
    costs, sizes = random_instance(seed)
    names = list(costs)
    smallest = sum(min(s.values()) for s in sizes.values())
    largest = sum(max(s.values()) for s in sizes.values())
    budget = random.Random(seed).randint(smallest, largest)
    best = min(sum(costs[n][b] for n, b in zip(names, combo, strict=True))
               for combo in itertools.product(*(sizes[n] for n in names))
               if sum(sizes[n][b] for n, b in zip(names, combo, strict=True)) <= budget)
    plan = plan_knapsack(costs, sizes, budget)
    greedy = plan_greedy(costs, sizes, budget)
    assert plan_bytes(plan, sizes) <= budget and plan_bytes(greedy, sizes) <= budget
    assert sum(costs[n][b] for n, b in plan) == pytest.approx(best)
    assert sum(costs[n][b] for n, b in greedy) >= best - 1e-12


def test_module_bytes_are_packed_bytes():
    model = make_gpt()
    sizes = module_bytes(model, ["blocks.0.mlp.fc_in"], (2, 4), group_size=16)
    # fc_in is 128 x 32: 4096 weights, 256 groups of 16 with a float32 scale each
    assert sizes == {"blocks.0.mlp.fc_in": {2: 1024 + 1024, 4: 2048 + 1024}}


def test_quantize_mixed_packs_each_module_at_its_width():
    model = make_gpt()
    plan = (("blocks.0.mlp.fc_in", 2), ("blocks.1.mlp.fc_out", 8), ("lm_head", 4))
    quantized, report = quantize_mixed(model, MixedConfig(plan=plan, group_size=16))
    assert report.converted == tuple(n for n, _ in plan)
    assert report.label == "mixed RTN int2/4/8 group16"
    for name, bits in plan:
        module = quantized.get_submodule(name)
        assert isinstance(module, PackedLinear) and module.spec.bits == bits
    uniform, _ = quantize_weight_only(model, WeightOnlyConfig(
        bits=2, granularity="group", group_size=16, modules=("blocks.0.mlp.fc_in",)))
    assert torch.equal(quantized.blocks[0].mlp.fc_in.packed, uniform.blocks[0].mlp.fc_in.packed)
    assert measure.size_bytes(quantized, ["lm_head"]) < measure.size_bytes(model, ["lm_head"])


def test_gptq_rounding_needs_batches_and_uses_them():
    model = make_gpt()
    config = MixedConfig(plan=(("lm_head", 3),), group_size=16, rounding="gptq")
    with pytest.raises(ValueError, match="rounding='gptq' calibrates on data"):
        quantize_mixed(model, config)
    torch.manual_seed(0)
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(2)]
    quantized, report = quantize_mixed(model, config, batches)
    assert quantized.lm_head.spec.bits == 3 and report.converted == ("lm_head",)


def test_bit_costs_fall_with_more_bits():
    model = make_gpt()
    torch.manual_seed(0)
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(2)]
    names = ["blocks.0.mlp.fc_in", "lm_head"]
    costs = bit_costs(model, lambda m: gpt_loss(m, batches), names, (2, 8), group_size=16)
    for name in names:
        assert abs(costs[name][8]) < abs(costs[name][2])


def test_plan_errors():
    costs, sizes = random_instance(0)
    smallest = sum(min(s.values()) for s in sizes.values())
    with pytest.raises(ValueError, match="below the smallest plan"):
        plan_knapsack(costs, sizes, smallest - 1)
    with pytest.raises(ValueError, match="sizes does not match costs"):
        plan_greedy(costs, {"m0": sizes["m0"]}, 10**6)
    with pytest.raises(ValueError, match="costs is empty"):
        plan_knapsack({}, {}, 100)


def test_config_errors():
    with pytest.raises(ValueError, match=r"plan=\(\) is empty"):
        MixedConfig()
    with pytest.raises(ValueError, match="bits=9 is not supported: choose 2..8"):
        MixedConfig(plan=(("lm_head", 9),))
    with pytest.raises(ValueError, match="rounding='awq' is unknown"):
        MixedConfig(plan=(("lm_head", 4),), rounding="awq")
    with pytest.raises(ValueError, match="group_size=24 does not divide"):
        quantize_mixed(make_gpt(), MixedConfig(plan=(("lm_head", 4),), group_size=24))
    with pytest.raises(ValueError, match="not submodules"):
        quantize_mixed(make_gpt(), MixedConfig(plan=(("nope", 4),)))
