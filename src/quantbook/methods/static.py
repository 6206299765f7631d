"""Eager static quantization: observers, calibration, and int8 activations between the stubs.

Static quantization fixes each activation's ``scale`` and ``zero_point`` ahead of time, from
statistics that *observers* collect while the model runs on calibration data. In eager mode,
tensors are only quantized between a ``QuantStub`` and a ``DeQuantStub``, and every op in between
must have a quantized kernel. In a transformer the only such op is the Linear layer itself:
LayerNorm, GELU, softmax, the attention matmuls and the residual adds stay float. So each
targeted ``nn.Linear`` is wrapped on its own (``QuantWrapper``: quantize -> int8 Linear ->
dequantize), and every Linear call crosses the float/int8 boundary twice; :func:`count_boundaries`
counts those crossings.

The flow is :func:`prepare_static` (wrap + insert observers) -> :func:`calibrate` (run batches)
-> :func:`convert_static` (swap in int8 modules), or in one call :func:`quantize_static`.
``convert_static`` refuses observers that saw no data: torch would convert them with a default
scale of 1.0 and only a warning, which gives a model of nonsense.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook.methods.base import MethodConfig, QuantReport, Selection, finish, select
from quantbook.quiet import quiet_torch_ao
from quantbook.validate import check_batches, check_model

OBSERVERS = ("minmax", "moving_average", "histogram")
GRANULARITIES = ("tensor", "channel")
# ops that run in float between the quantized Linears, named for reports (they are functions,
# not modules, so no module list can show them)
FLOAT_OPS = ("LayerNorm", "GELU", "softmax", "attention matmuls", "residual adds")


@dataclass(frozen=True)
class StaticConfig(MethodConfig):
    """Which Linear layers get int8 activations and weights, and how ranges are observed.

    Attributes:
        targets: Linear groups of :data:`quantbook.targets.GROUPS`.
        observer: how activation ranges are collected: ``"minmax"`` (running min and max),
            ``"moving_average"`` (exponential average of per-batch min/max, less sensitive to
            one outlier batch) or ``"histogram"`` (picks the range that minimises the
            quantization error of the observed histogram; slowest, usually most accurate).
        granularity: weight scales, ``"channel"`` (one per output row) or ``"tensor"``.
    """

    observer: str = "histogram"  # torch's x86 default qconfig uses it too
    granularity: str = "channel"

    family: ClassVar[str] = "static (eager)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if "embeddings" in self.targets:
            raise ValueError(
                f"targets={self.targets!r} names 'embeddings': static quantization applies to "
                "Linear layers; choose from 'attention', 'ffn', 'head'")
        for name, value, choices in (("observer", self.observer, OBSERVERS),
                                     ("granularity", self.granularity, GRANULARITIES)):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not supported: choose one of {choices}")

    @property
    def label(self) -> str:
        """E.g. ``"static int8 (histogram observer, per-channel weights)"``."""
        return f"static int8 ({self.observer} observer, per-{self.granularity} weights)"


def qconfig(config: StaticConfig):
    """The ``torch.ao.quantization.QConfig`` for ``config`` (x86: activations on 7 bits).

    Activations use quint8 codes ``[0, 127]`` (torch's ``reduce_range``): the x86 int8 kernels
    add pairs of uint8 x int8 products in 16-bit registers, which a full 8-bit range could
    overflow.
    """
    from torch.ao import quantization as tq

    activation = {
        "minmax": tq.MinMaxObserver,
        "moving_average": tq.MovingAverageMinMaxObserver,
        "histogram": tq.HistogramObserver,
    }[config.observer].with_args(dtype=torch.quint8, quant_min=0, quant_max=127)
    weight = (tq.default_per_channel_weight_observer if config.granularity == "channel"
              else tq.default_weight_observer)
    return tq.QConfig(activation=activation, weight=weight)


def prepare_static(model: nn.Module, config: StaticConfig = StaticConfig()) -> nn.Module:
    """Return a copy of ``model`` with the selected Linears wrapped and observers attached.

    Args:
        model: a float32 CPU model (quantbook's GPT or MiniLM; any model with
            ``config.modules``). It is not modified.
        config: the recipe.

    Returns:
        The prepared copy, in eval mode; run :func:`calibrate` on it, then
        :func:`convert_static`.
    """
    from torch.ao.quantization import QuantWrapper, prepare

    if not isinstance(config, StaticConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a StaticConfig")
    check_model(model, config.label)
    selection = select(model, config)
    wrapped = copy.deepcopy(model).eval()
    with quiet_torch_ao():
        qc = qconfig(config)
        for name in selection.chosen:
            wrapper = QuantWrapper(wrapped.get_submodule(name))
            wrapper.qconfig = qc
            parent, _, child = name.rpartition(".")
            setattr(wrapped.get_submodule(parent), child, wrapper)
        prepare(wrapped, inplace=True)
    wrapped._quantbook_static = (config, selection)  # for convert_static
    return wrapped


def forward_batch(model: nn.Module, batch) -> None:
    """Run one batch: a dict (tokenizer output) as keyword arguments, anything else positionally."""
    if isinstance(batch, dict):
        model(**batch)
    else:
        model(batch)


def calibrate(prepared: nn.Module, batches: Sequence,
              run_fn: Callable[[nn.Module, object], None] = forward_batch,
              progress: bool | Callable[[int, int], None] | None = None) -> nn.Module:
    """Feed calibration batches through a prepared model so its observers record ranges.

    Args:
        prepared: the output of :func:`prepare_static`.
        batches: calibration inputs, e.g. from :func:`quantbook.data.minilm_calibration_batches`;
            checked against the model (shape, dtype, token range) before any runs.
        run_fn: ``run_fn(model, batch)`` runs one batch; the default handles tensors and dicts.
        progress: ``None`` (silent), ``True`` for a ``tqdm.auto`` bar, or a callable
            ``progress(done, total)`` called after each batch.

    Returns:
        ``prepared`` itself, calibrated in place.
    """
    _require_prepared(prepared, "calibrate")
    batches = check_batches(prepared, batches)
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="calibrating")
        report = lambda done, total: bar.update(1)  # noqa: E731
    else:
        bar, report = None, progress
    with torch.no_grad(), quiet_torch_ao():  # not inference_mode: observers update buffers
        for done, batch in enumerate(batches, start=1):
            run_fn(prepared, batch)
            if report is not None:
                report(done, len(batches))
    if bar is not None:
        bar.close()
    return prepared


def _require_prepared(prepared: nn.Module, step: str) -> tuple[StaticConfig, Selection]:
    if not hasattr(prepared, "_quantbook_static"):
        raise ValueError(f"{step} needs a model from prepare_static: build it with "
                         "prepared = prepare_static(model, config), run "
                         "calibrate(prepared, batches), then convert_static(prepared)")
    return prepared._quantbook_static


def unobserved(prepared: nn.Module) -> list[str]:
    """Names of the observers in ``prepared`` that have seen no data yet."""
    from torch.ao.quantization.observer import ObserverBase

    return [name for name, module in prepared.named_modules()
            if isinstance(module, ObserverBase) and hasattr(module, "min_val")
            and not bool(torch.isfinite(module.min_val).all())]


def convert_static(prepared: nn.Module) -> tuple[nn.Module, QuantReport]:
    """Swap the observed Linears for int8 ones; returns ``(quantized_copy, report)``.

    ``report.float_modules`` lists the modules with parameters that still run in float
    (LayerNorm, embeddings); ``report.float_ops`` the float operations between the int8
    Linears (GELU, softmax, ...).

    Raises:
        ValueError: ``prepared`` is not from :func:`prepare_static`, or an observer saw no data.
    """
    from torch.ao.nn import quantized as nnq

    config, selection = _require_prepared(prepared, "convert_static")
    empty = unobserved(prepared)
    if empty:
        raise ValueError(
            f"{len(empty)} observers have seen no data (e.g. {empty[0]!r}): converting now "
            "would use a default scale of 1.0 and give a model of nonsense; run "
            "calibrate(prepared, batches) first, with batches that reach every wrapped Linear")
    with quiet_torch_ao():
        from torch.ao.quantization import convert

        quantized = convert(prepared, inplace=False)
    del quantized._quantbook_static
    return finish(quantized, config, selection, lambda m: type(m.module) is nnq.Linear,
                  float_ops=FLOAT_OPS)


def quantize_static(model: nn.Module, config: StaticConfig, batches: Sequence,
                    run_fn: Callable[[nn.Module, object], None] = forward_batch
                    ) -> tuple[nn.Module, QuantReport]:
    """Prepare, calibrate on ``batches`` and convert in one call.

    Args:
        model: a float32 CPU model; not modified.
        config: the recipe.
        batches: calibration inputs (training text, never evaluation text).
        run_fn: ``run_fn(model, batch)`` runs one batch.

    Returns:
        ``(quantized_copy, report)``.
    """
    if not isinstance(config, StaticConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a StaticConfig")
    check_model(model, config.label)
    batches = check_batches(model, batches)  # a generator is read once, here
    prepared = calibrate(prepare_static(model, config), batches, run_fn)
    return convert_static(prepared)


def count_boundaries(model: nn.Module, fn: Callable[[], object]) -> dict[str, int]:
    """Count the float->int8 and int8->float conversions one call of ``fn`` performs.

    Example: a MiniLM with its 36 attention and FFN Linears wrapped does 36 of each per
    forward pass: one quantize before and one dequantize after every Linear.

    Returns:
        ``{"quantize": n, "dequantize": n}``.
    """
    from torch.ao.nn import quantized as nnq
    from torch.ao.quantization import DeQuantStub, QuantStub

    if not callable(fn):
        raise TypeError(f"fn is a {type(fn).__name__}: expected a zero-argument callable, "
                        "e.g. lambda: model(ids)")
    counts = {"quantize": 0, "dequantize": 0}
    kinds = {nnq.Quantize: "quantize", QuantStub: "quantize",
             nnq.DeQuantize: "dequantize", DeQuantStub: "dequantize"}
    hooks = []
    for module in model.modules():
        kind = kinds.get(type(module))
        if kind is not None:
            def hook(_module, _inputs, _output, kind=kind):
                counts[kind] += 1
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode(), quiet_torch_ao():
            fn()
    finally:
        for handle in hooks:
            handle.remove()
    return counts
