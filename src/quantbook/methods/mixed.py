"""A bit width per Linear, chosen to meet a byte budget with the least loss.

1. costs: quantize ONE Linear at each candidate width (everything else float) and measure how
   much a loss rises (:func:`bit_costs`, built on :func:`~quantbook.methods.sensitivity.
   sensitivity_scan`);
2. plan: one width per Linear minimising the summed cost with the packed bytes within a
   budget - a multiple-choice knapsack, solved exactly by dynamic programming over bytes
   (:func:`plan_knapsack`), or greedily by best cost drop per extra byte (:func:`plan_greedy`);
3. apply: :func:`quantize_mixed` packs each Linear at its planned width, by RTN or GPTQ.

The plan assumes that costs add up across layers; the measured quality of the result checks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from quantbook import affine, packing
from quantbook.grid import check_bits, check_choice
from quantbook.methods.base import MethodConfig, QuantReport, finish, select, swap_modules
from quantbook.methods.gptq import grid_spec, group_rule, run_gptq
from quantbook.methods.packed import PackedLinear
from quantbook.methods.sensitivity import sensitivity_scan
from quantbook.methods.weight_only import WeightOnlyConfig
from quantbook.validate import check_model

ROUNDINGS = ("rtn", "gptq")


@dataclass(frozen=True)
class MixedConfig(MethodConfig):
    """A plan ``((module name, bits), ...)`` and how to round each module to its width."""

    plan: tuple[tuple[str, int], ...] = ()
    scheme: str = "symmetric"
    group_size: int | None = 32  # None: one scale per output channel
    rounding: str = "rtn"  # "rtn" or "gptq" (calibrates: pass batches)
    damp: float = 0.01  # GPTQ only

    family: ClassVar[str] = "mixed bit widths (quantbook)"

    def __post_init__(self) -> None:
        plan = tuple((name, bits) for name, bits in dict(self.plan).items())
        if not plan:
            raise ValueError("plan=() is empty: give (module name, bits) pairs, e.g. from "
                             "plan_knapsack(costs, sizes, budget_bytes)")
        for _, bits in plan:
            check_bits(bits)
        check_choice("rounding", self.rounding, ROUNDINGS)
        object.__setattr__(self, "plan", plan)
        if self.modules is None:
            object.__setattr__(self, "modules", tuple(name for name, _ in plan))
        super().__post_init__()
        self.spec(plan[0][1])

    def spec(self, bits: int) -> affine.QuantSpec:
        """The grid of a module planned at ``bits``."""
        return grid_spec(bits, self.scheme, self.group_size)

    @property
    def label(self) -> str:
        """E.g. ``"mixed RTN int2/3/4/8 group32"``."""
        widths = "/".join(str(b) for b in sorted({b for _, b in self.plan}))
        how = "per-channel" if self.group_size is None else f"group{self.group_size}"
        return f"mixed {self.rounding.upper()} int{widths} {how}"


def quantize_mixed(model: nn.Module, config: MixedConfig, batches: Sequence | None = None
                   ) -> tuple[nn.Module, QuantReport]:
    """A copy of ``model`` with each planned Linear packed at its own width, and a report."""
    if not isinstance(config, MixedConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a MixedConfig")
    widths = dict(config.plan)
    if config.rounding == "gptq":
        if batches is None:
            raise ValueError("rounding='gptq' calibrates on data: pass batches, e.g. "
                             "quantbook.data.gpt_calibration_batches(tokenizer, block_size)")
        return run_gptq(model, config, batches, lambda name: config.spec(widths[name]),
                        damp=config.damp, block_size=128, act_order=True, sequential=True,
                        group_size=config.group_size)
    check_model(model, config.label)
    selection = select(model, config, group_rule(config, config.group_size))
    quantized = swap_modules(model, selection.chosen, lambda name, linear: PackedLinear.
                             from_linear(linear, config.spec(widths[name])))
    return finish(quantized, config, selection, lambda m: isinstance(m, PackedLinear))


def module_bytes(model: nn.Module, names: Sequence[str], choices: Sequence[int],
                 group_size: int | None = 32, scheme: str = "symmetric"
                 ) -> dict[str, dict[int, int]]:
    """Packed bytes (codes, scales, zero points) of each Linear's weight at each width."""
    return {name: {bits: packing.storage_bytes(tuple(model.get_submodule(name).weight.shape),
                                               grid_spec(bits, scheme, group_size))
                   for bits in choices} for name in names}


def bit_costs(model: nn.Module, loss_fn: Callable[[nn.Module], float], names: Sequence[str],
              choices: Sequence[int] = (2, 3, 4, 8), group_size: int | None = 32,
              scheme: str = "symmetric") -> dict[str, dict[int, float]]:
    """How much ``loss_fn`` rises with one Linear alone at each width (RTN), per module."""
    granularity = "channel" if group_size is None else "group"
    costs: dict[str, dict[int, float]] = {name: {} for name in names}
    for bits in choices:
        config = WeightOnlyConfig(bits=bits, scheme=scheme, granularity=granularity,
                                  group_size=group_size, modules=tuple(names))
        for row in sensitivity_scan(model, loss_fn, names, config, higher_is_better=False):
            costs[row.module][bits] = row.drop
    return costs


def _check_plan_inputs(costs: Mapping, sizes: Mapping, budget_bytes: int) -> list[str]:
    names = list(costs)
    if not names:
        raise ValueError("costs is empty: pass {module: {bits: cost}} from bit_costs")
    missing = [n for n in names if n not in sizes or set(sizes[n]) != set(costs[n])]
    if missing:
        raise ValueError(f"sizes does not match costs for {missing[:3]}: build both for the "
                         "same modules and widths (module_bytes, bit_costs)")
    smallest = sum(min(sizes[n].values()) for n in names)
    if budget_bytes < smallest:
        raise ValueError(f"budget_bytes={budget_bytes} is below the smallest plan "
                         f"({smallest} bytes, every module at its fewest bits): raise it")
    return names


def plan_knapsack(costs: Mapping[str, Mapping[int, float]], sizes: Mapping[str, Mapping[int, int]],
                  budget_bytes: int) -> tuple[tuple[str, int], ...]:
    """The plan of least summed cost within ``budget_bytes``: exact multiple-choice knapsack.

    Dynamic programming over bytes in units of the sizes' greatest common divisor, so the
    budget is met exactly. ``best[c]`` is the least cost of the modules seen so far within
    ``c`` units; each module adds one of its widths. Negative costs (noise) count as 0.
    """
    names = _check_plan_inputs(costs, sizes, budget_bytes)
    unit = math.gcd(*[size for n in names for size in sizes[n].values()])
    capacity = budget_bytes // unit
    best = np.zeros(capacity + 1)
    picks = []
    for name in names:
        new, arg = np.full(capacity + 1, np.inf), np.full(capacity + 1, -1)
        for bits, size in sizes[name].items():
            w = size // unit
            if w > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[w:] = best[: capacity + 1 - w] + max(costs[name][bits], 0.0)
            better = candidate < new
            new[better], arg[better] = candidate[better], bits
        best = new
        picks.append(arg)
    plan, c = {}, capacity
    for name, arg in zip(reversed(names), reversed(picks), strict=True):
        plan[name] = int(arg[c])
        c -= sizes[name][plan[name]] // unit
    return tuple((name, plan[name]) for name in names)


def plan_greedy(costs: Mapping[str, Mapping[int, float]], sizes: Mapping[str, Mapping[int, int]],
                budget_bytes: int) -> tuple[tuple[str, int], ...]:
    """Start every module at its fewest bits; take the best cost drop per extra byte that fits."""
    names = _check_plan_inputs(costs, sizes, budget_bytes)
    plan = {n: min(sizes[n], key=sizes[n].get) for n in names}
    used = sum(sizes[n][plan[n]] for n in names)
    while True:
        best = None
        for n in names:
            now = max(costs[n][plan[n]], 0.0)
            for bits, size in sizes[n].items():
                extra, gain = size - sizes[n][plan[n]], now - max(costs[n][bits], 0.0)
                if extra > 0 and gain > 0 and used + extra <= budget_bytes \
                        and (best is None or gain / extra > best[0]):
                    best = (gain / extra, n, bits, extra)
        if best is None:
            return tuple((n, plan[n]) for n in names)
        _, n, bits, extra = best
        plan[n], used = bits, used + extra


def plan_bytes(plan: Sequence[tuple[str, int]], sizes: Mapping[str, Mapping[int, int]]) -> int:
    """Packed weight bytes of a plan."""
    return sum(sizes[name][bits] for name, bits in plan)
