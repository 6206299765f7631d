"""Where does a forward pass spend its time? Per-module timing and the operators dispatched.

* :func:`time_breakdown` times every float, int8 and dynamic Linear and every quantize and
  dequantize step of a model with module hooks, and calls the rest "float ops".
* :func:`operator_log` lists every operator a call sends to PyTorch's dispatcher, which shows
  why an unfused method (torchao without ``torch.compile``) runs many small kernels.

Both complement :mod:`quantbook.measure`, which times whole calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import perf_counter_ns

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from quantbook.quiet import quiet_torch_ao


def _timed_kinds() -> dict[type, str]:
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    return {nn.Linear: "float Linear", nnq.Linear: "int8 Linear",
            nnqd.Linear: "dynamic int8 Linear", nnq.Quantize: "quantize",
            nnq.DeQuantize: "dequantize"}


def time_breakdown(calls: Mapping[str, tuple[nn.Module, Callable[[], object]]],
                   repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Milliseconds per call spent in each kind of module, and in everything else.

    Module hooks time every float, int8 and dynamic Linear and every quantize and dequantize
    step; ``"float ops"`` is the rest of the call (LayerNorm, GELU, softmax, attention
    matmuls, residual adds, embeddings), ``"total"`` the whole call. Each round calls every
    entry once, in order (as :func:`quantbook.measure.compare_latency` does), and each number
    is the median over ``repeats`` rounds.

    Args:
        calls: label -> ``(model, fn)``: ``fn()`` runs ``model`` once.

    Returns:
        label -> {kind: ms}, kinds that never ran left out.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1, warmup >= 0")
    for label, pair in calls.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[1])):
            raise TypeError(f"calls[{label!r}] is a {type(pair).__name__}: expected a "
                            "(model, fn) pair, e.g. (model, lambda: model(ids))")
    kinds = _timed_kinds()
    spent = {label: dict.fromkeys(kinds.values(), 0) for label in calls}
    starts: dict[int, int] = {}
    handles = []

    def start(module, _args):
        starts[id(module)] = perf_counter_ns()

    def stopper(parts: dict[str, int]) -> Callable:
        def stop(module, _args, _output):
            parts[kinds[type(module)]] += perf_counter_ns() - starts[id(module)]
        return stop

    for label, (model, _) in calls.items():
        stop = stopper(spent[label])
        for module in model.modules():
            if type(module) in kinds:
                handles += [module.register_forward_pre_hook(start),
                            module.register_forward_hook(stop)]
    rounds = {label: [] for label in calls}
    try:
        with torch.inference_mode(), quiet_torch_ao():
            for round_ in range(warmup + repeats):
                for label, (_, fn) in calls.items():
                    spent[label].update(dict.fromkeys(spent[label], 0))
                    begin = perf_counter_ns()
                    fn()
                    total = perf_counter_ns() - begin
                    if round_ >= warmup:
                        parts = {k: ns for k, ns in spent[label].items() if ns}
                        rounds[label].append({**parts, "float ops": total - sum(parts.values()),
                                              "total": total})
    finally:
        for handle in handles:
            handle.remove()
    return {label: {k: float(np.median([r[k] for r in rs])) / 1e6 for k in rs[0]}
            for label, rs in rounds.items()}


class _OperatorLog(TorchDispatchMode):
    """Record the name of every operator that reaches PyTorch's dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def operator_log(fn: Callable[[], object]) -> list[str]:
    """The operators ``fn()`` calls, in order, e.g. ``["aten::linear"]`` for a float Linear.

    Each entry is one call into PyTorch's dispatcher (``aten::`` for core ops, ``quantized::``
    for the eager quantized kernels, ``torchao::`` for torchao's own): eager PyTorch runs each
    as a separate kernel, reading its inputs from memory and writing its output back. Views
    (``aten::t``, ``aten::reshape``) are listed too, though they move no data.
    """
    with torch.inference_mode(), _OperatorLog() as log:
        fn()
    return log.names
