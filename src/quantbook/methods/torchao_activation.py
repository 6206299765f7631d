"""torchao's int8 activation x int8 weight quantization: dynamic, and static with calibration.

``torchao.quantization.quantize_`` replaces each selected Linear's weight by an ``Int8Tensor``
(int8 codes, one scale per output row). Its ``F.linear`` then quantizes the activation to int8
(symmetric, one scale per token for the dynamic config, or one calibrated scale per tensor for
the static one) and runs an int8 matmul. Unlike the eager ``torch.ao`` modules this is plain
PyTorch code, so it runs on CPU and GPU alike; on the CPU without ``torch.compile`` it runs as
separate, unfused operations, slower than the eager kernels and, depending on the machine and the
shapes, slower or faster than float (chapters 04 to 06 measure it).

torchao is imported lazily, after :func:`quantbook.quiet.silence_known_noise`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from quantbook.methods.dynamic import mha_members, quiet_torch_ao, target_names
from quantbook.methods.report import QuantReport, float_leaf_modules
from quantbook.methods.static import forward_batch

_MHA_REASON = ("inside nn.MultiheadAttention (a NonDynamicallyQuantizableLinear, which "
               "torchao's own filter skips too)")


def _select(model: nn.Module, targets, modules, exclude) -> tuple[list[str], list[tuple]]:
    names, excluded = target_names(model, targets, modules, exclude)
    inside_mha = mha_members(model)
    chosen, skipped = [], []
    for name in names:
        module = model.get_submodule(name)
        if name in excluded:
            skipped.append((name, "excluded: kept in float on request"))
        elif name in inside_mha:
            skipped.append((name, _MHA_REASON))
        elif type(module) is not nn.Linear:
            skipped.append((name, f"a {type(module).__name__}: only nn.Linear is quantized"))
        else:
            chosen.append(name)
    return chosen, skipped


def _finish(quantized: nn.Module, chosen: list[str], skipped: list[tuple],
            method: str) -> tuple[nn.Module, QuantReport]:
    from torchao.quantization import Int8Tensor

    converted = [n for n in chosen if isinstance(quantized.get_submodule(n).weight, Int8Tensor)]
    skipped += [(n, "torchao left its weight in float") for n in chosen if n not in converted]
    if not converted:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3]) or "no Linear was targeted"
        raise ValueError(f"{method} converted no module: {reasons}; target plain nn.Linear "
                         "layers (see quantbook.targets.list_targets(model))")
    report = QuantReport(method=method, converted=tuple(converted), skipped=tuple(skipped),
                         float_modules=float_leaf_modules(quantized, converted))
    return quantized, report


def torchao_dynamic(model: nn.Module, targets: Iterable[str] = ("attention", "ffn"), *,
                    modules: Iterable[str] | None = None,
                    exclude: Iterable[str] = ()) -> tuple[nn.Module, QuantReport]:
    """Return a copy with torchao's ``Int8DynamicActivationInt8WeightConfig`` applied by name.

    Args:
        model: a float model on any device (quantbook's GPT or MiniLM for group ``targets``).
            It is not modified.
        targets: module groups from :data:`quantbook.targets.GROUPS`.
        modules: explicit Linear names instead of ``targets``.
        exclude: Linear names to keep float.

    Returns:
        ``(quantized_copy, report)``; converted Linears hold an ``Int8Tensor`` weight.
    """
    import copy

    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    chosen, skipped = _select(model, targets, modules, exclude)
    quantized = copy.deepcopy(model).eval()
    if chosen:
        with quiet_torch_ao():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            wanted = set(chosen)
            # set_inductor_config=False: do not change torch._inductor's global settings
            config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
            quantize_(quantized, config, filter_fn=lambda _module, fqn: fqn in wanted)
    return _finish(quantized, chosen, skipped, "torchao int8 dynamic (per-token x per-row)")


def calibrate_input_absmax(model: nn.Module, names: Sequence[str], batches: Sequence,
                           run_fn: Callable[[nn.Module, object], None] = forward_batch
                           ) -> dict[str, tuple[float, int]]:
    """Largest absolute input value of each named module over the batches, and the input rank.

    Returns:
        name -> ``(absmax, ndim)``; ``ndim`` is the number of dimensions of its inputs.
    """
    seen: dict[str, tuple[float, int]] = {}

    def observe(name):
        def hook(_module, args):
            x = args[0]
            previous = seen.get(name, (0.0, x.ndim))[0]
            seen[name] = (max(previous, float(x.detach().abs().max())), x.ndim)
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(observe(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                run_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"modules {missing[:3]} never ran during calibration: check that the "
                         "batches reach them")
    return seen


def torchao_static(model: nn.Module, batches: Sequence,
                   targets: Iterable[str] = ("attention", "ffn"), *,
                   modules: Iterable[str] | None = None, exclude: Iterable[str] = (),
                   run_fn: Callable[[nn.Module, object], None] = forward_batch
                   ) -> tuple[nn.Module, QuantReport]:
    """Static int8 with torchao: one calibrated symmetric activation scale per Linear.

    Each Linear's input abs-max over ``batches`` gives ``scale = absmax / 127``; torchao's
    ``Int8StaticActivationInt8WeightConfig`` then quantizes activations with that fixed scale
    and weights per output row. torchao needs the scale to have as many dimensions as the
    activation (``(1, 1, 1)`` for a ``(B, T, C)`` input), so inputs at inference must have the
    rank seen in calibration.

    Returns:
        ``(quantized_copy, report)``.
    """
    import copy

    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    chosen, skipped = _select(model, targets, modules, exclude)
    quantized = copy.deepcopy(model).eval()
    if chosen:
        stats = calibrate_input_absmax(quantized, chosen, batches, run_fn)
        with quiet_torch_ao():
            from torchao.quantization import (
                Int8StaticActivationInt8WeightConfig,
                PerRow,
                PerTensor,
                quantize_,
            )

            for name in chosen:
                absmax, ndim = stats[name]
                device = quantized.get_submodule(name).weight.device
                scale = torch.full((1,) * ndim, max(absmax, 1e-12) / 127.0, device=device)
                config = Int8StaticActivationInt8WeightConfig(
                    act_quant_scale=scale, granularity=[PerTensor(), PerRow()],
                    set_inductor_config=False)
                quantize_(quantized, config, filter_fn=lambda _m, fqn, name=name: fqn == name)
    return _finish(quantized, chosen, skipped, "torchao int8 static (per-tensor x per-row)")
