"""Eager static quantization: observers, calibration, and int8 activations between the stubs.

Static quantization fixes each activation's ``scale`` and ``zero_point`` ahead of time, from
statistics that *observers* collect while the model runs on calibration data. In eager mode,
tensors are only quantized between a ``QuantStub`` and a ``DeQuantStub``, and every op in between
must have a quantized kernel. In a transformer the only such op is the Linear layer itself:
LayerNorm, GELU, softmax, the attention matmuls and the residual adds stay float. So each
targeted ``nn.Linear`` is wrapped on its own (``QuantWrapper``: quantize -> int8 Linear ->
dequantize), and every Linear call crosses the float/int8 boundary twice; :func:`count_boundaries`
counts those crossings.

The flow is ``prepare_static`` (wrap + insert observers) -> :func:`calibrate` (run batches) ->
``convert_static`` (swap in int8 modules), or in one call :func:`quantize_static`, which uses
``torch.ao.quantization.quantize(model, run_fn, run_args)`` itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantbook.methods.dynamic import check_cpu, mha_members, quiet_torch_ao, target_names
from quantbook.methods.report import QuantReport

OBSERVERS = ("minmax", "moving_average", "histogram")
GRANULARITIES = ("tensor", "channel")
# ops that run in float between the quantized Linears, named for reports (they are functions,
# not modules, so no module list can show them)
FLOAT_OPS = ("LayerNorm", "GELU", "softmax", "attention matmuls", "residual adds")
_NO_COMPUTE = (nn.Dropout, nn.Identity)  # leaf modules that do nothing at inference


@dataclass(frozen=True)
class StaticConfig:
    """Which Linear layers get int8 activations and weights, and how ranges are observed.

    Attributes:
        targets: module groups from :data:`quantbook.targets.GROUPS` (Linear groups only).
        observer: how activation ranges are collected: ``"minmax"`` (running min and max),
            ``"moving_average"`` (exponential average of per-batch min/max, less sensitive to
            one outlier batch) or ``"histogram"`` (picks the range that minimises the
            quantization error of the observed histogram; slowest, usually most accurate).
        granularity: weight scales, ``"channel"`` (one per output row) or ``"tensor"``.
    """

    targets: tuple[str, ...] = ("attention", "ffn")
    observer: str = "histogram"  # torch's x86 default qconfig uses it too
    granularity: str = "channel"

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        if "embeddings" in targets:
            raise ValueError(
                f"targets={targets!r} names 'embeddings': static quantization applies to "
                "Linear layers; choose from 'attention', 'ffn', 'head'"
            )
        for name, value, choices in (
            ("observer", self.observer, OBSERVERS),
            ("granularity", self.granularity, GRANULARITIES),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not supported: choose one of {choices}")

    @property
    def method(self) -> str:
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


def _wrap(model: nn.Module, config: StaticConfig, modules: Iterable[str] | None,
          exclude: Iterable[str]) -> tuple[nn.Module, list[tuple[str, str]]]:
    """Deep-copy ``model`` and wrap each targeted Linear in a ``QuantWrapper`` with a qconfig."""
    from torch.ao.quantization import QuantWrapper

    check_cpu(model, config.method)
    names, excluded = target_names(model, config.targets, modules, exclude)
    inside_mha = mha_members(model)
    wrapped = copy.deepcopy(model).eval()
    skipped = []
    with quiet_torch_ao():
        qc = qconfig(config)
    for name in names:
        module = wrapped.get_submodule(name)
        if name in excluded:
            skipped.append((name, "excluded: kept in float on request"))
        elif name in inside_mha:
            skipped.append((name, "inside nn.MultiheadAttention, which uses its weights "
                                  "directly, so the Linear cannot be wrapped"))
        elif type(module) is not nn.Linear:
            skipped.append((name, f"a {type(module).__name__}: only nn.Linear is wrapped"))
        else:
            wrapper = QuantWrapper(module)
            wrapper.qconfig = qc
            parent_name, _, child = name.rpartition(".")
            setattr(wrapped.get_submodule(parent_name), child, wrapper)
    if len(skipped) == len(names):
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3]) or "no Linear was targeted"
        raise ValueError(f"{config.method} converted no module: {reasons}; target plain "
                         "nn.Linear layers (see quantbook.targets.list_targets(model))")
    return wrapped, skipped


def prepare_static(model: nn.Module, config: StaticConfig | None = None, *,
                   modules: Iterable[str] | None = None,
                   exclude: Iterable[str] = ()) -> nn.Module:
    """Return a copy of ``model`` with targeted Linears wrapped and observers attached.

    Args:
        model: a float CPU model (quantbook's GPT or MiniLM; any model with ``modules``).
        config: the recipe, ``StaticConfig()`` by default.
        modules: explicit Linear names instead of ``config.targets``.
        exclude: Linear names to keep float.

    Returns:
        The prepared copy; run :func:`calibrate` on it, then :func:`convert_static`.
    """
    config = StaticConfig() if config is None else config
    wrapped, skipped = _wrap(model, config, modules, exclude)
    wrapped._quantbook_static = (config, tuple(skipped))  # for convert_static's report
    with quiet_torch_ao():
        from torch.ao.quantization import prepare

        prepare(wrapped, inplace=True)
    return wrapped


def forward_batch(model: nn.Module, batch) -> None:
    """Run one batch: a dict (tokenizer output) as keyword arguments, anything else positionally."""
    if isinstance(batch, dict):
        model(**batch)
    else:
        model(batch)


def run_batches(model: nn.Module, batches: Sequence) -> None:
    """Calibration ``run_fn`` for ``torch.ao.quantization.quantize``: forward every batch."""
    with torch.no_grad():  # not inference_mode: observers update their buffers in place
        for batch in batches:
            forward_batch(model, batch)


def calibrate(prepared: nn.Module, batches: Sequence,
              run_fn: Callable[[nn.Module, object], None] = forward_batch,
              progress: bool | Callable[[int, int], None] | None = None) -> nn.Module:
    """Feed calibration batches through a prepared model so its observers record ranges.

    Args:
        prepared: the output of :func:`prepare_static`.
        batches: calibration inputs, e.g. from :func:`minilm_calibration_batches`.
        run_fn: ``run_fn(model, batch)`` runs one batch; the default handles tensors and dicts.
        progress: ``None`` (silent), ``True`` for a ``tqdm.auto`` bar, or a callable
            ``progress(done, total)`` called after each batch.

    Returns:
        ``prepared`` itself, calibrated in place.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass at least one calibration batch")
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="calibrating")
        report = lambda done, total: bar.update(1)  # noqa: E731
    else:
        bar, report = None, progress
    with torch.no_grad(), quiet_torch_ao():
        for done, batch in enumerate(batches, start=1):
            run_fn(prepared, batch)
            if report is not None:
                report(done, len(batches))
    if bar is not None:
        bar.close()
    return prepared


def _report(quantized: nn.Module, method: str,
            skipped: Sequence[tuple[str, str]]) -> QuantReport:
    from torch.ao.nn import quantized as nnq
    from torch.ao.quantization import QuantWrapper

    converted, float_modules = [], []
    for name, module in quantized.named_modules():
        if isinstance(module, QuantWrapper) and type(module.module) is nnq.Linear:
            converted.append(name)
    inside = tuple(f"{n}." for n in converted)
    for name, module in quantized.named_modules():
        is_leaf = next(module.children(), None) is None
        if name and is_leaf and not name.startswith(inside) and not isinstance(module, _NO_COMPUTE):
            float_modules.append(name)
    return QuantReport(method=f"{method}; float between them: {', '.join(FLOAT_OPS)}",
                       converted=tuple(converted), skipped=tuple(skipped),
                       float_modules=tuple(float_modules))


def convert_static(prepared: nn.Module) -> tuple[nn.Module, QuantReport]:
    """Swap the observed Linears for int8 ones; returns ``(quantized_copy, report)``.

    ``report.float_modules`` lists the leaf modules that still run in float (LayerNorm,
    embeddings, activation modules); the ``method`` line names the functional float ops.
    """
    if not hasattr(prepared, "_quantbook_static"):
        raise ValueError("prepared is not a model from prepare_static: build it with "
                         "prepare_static(model, config), run calibrate(prepared, batches), then "
                         "convert_static(prepared)")
    config, skipped = prepared._quantbook_static
    with quiet_torch_ao():
        from torch.ao.quantization import convert

        quantized = convert(prepared, inplace=False)
    del quantized._quantbook_static
    return quantized, _report(quantized, config.method, skipped)


def quantize_static(model: nn.Module, config: StaticConfig, run_fn: Callable, run_args: tuple,
                    *, modules: Iterable[str] | None = None,
                    exclude: Iterable[str] = ()) -> tuple[nn.Module, QuantReport]:
    """Wrap, then ``torch.ao.quantization.quantize(model, run_fn, run_args)`` in one call.

    Args:
        model: a float CPU model; not modified.
        config: the recipe.
        run_fn: calibration function called as ``run_fn(prepared_model, *run_args)``, e.g.
            :func:`run_batches`.
        run_args: its extra arguments, e.g. ``(batches,)``.

    Returns:
        ``(quantized_copy, report)``.
    """
    wrapped, skipped = _wrap(model, config, modules, exclude)
    with quiet_torch_ao():
        from torch.ao.quantization import quantize

        quantized = quantize(wrapped, run_fn, tuple(run_args), inplace=True)
    return quantized, _report(quantized, config.method, skipped)


def count_boundaries(model: nn.Module, fn: Callable[[], object]) -> dict[str, int]:
    """Count the float->int8 and int8->float conversions one call of ``fn`` performs.

    Example: a MiniLM with its 36 attention and FFN Linears wrapped does 36 of each per
    forward pass: one quantize before and one dequantize after every Linear.

    Returns:
        ``{"quantize": n, "dequantize": n}``.
    """
    from torch.ao.nn import quantized as nnq
    from torch.ao.quantization import DeQuantStub, QuantStub

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


def gpt_calibration_batches(tokenizer, block_size: int, n_batches: int = 8,
                            batch_size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Token windows for calibrating the GPT, from the training text (never evaluation text).

    Windows of ``block_size`` tokens start at distinct random positions of
    ``quantbook.data.lee_split().train``, drawn with NumPy's generator seeded by ``seed``.

    Returns:
        ``n_batches`` LongTensors of shape ``(batch_size, block_size)``.
    """
    from quantbook.data import lee_split

    ids = torch.tensor(tokenizer.encode(lee_split().train), dtype=torch.long)
    n_windows = n_batches * batch_size
    n_starts = ids.numel() - block_size + 1
    if n_windows > n_starts:
        raise ValueError(
            f"n_batches={n_batches} x batch_size={batch_size} windows of {block_size} tokens "
            f"need {n_windows} start positions, the training text has {max(n_starts, 0)}: "
            "ask for fewer batches"
        )
    starts = np.random.default_rng(seed).choice(n_starts, size=n_windows, replace=False)
    windows = torch.stack([ids[s : s + block_size] for s in starts.tolist()])  # (N, T)
    return list(windows.view(n_batches, batch_size, block_size))  # n x (batch, T)


def minilm_calibration_batches(tokenizer, n_batches: int = 8, batch_size: int = 8,
                               seed: int = 0, max_length: int = 256) -> list[dict]:
    """Tokenized training articles (never the 50 evaluation documents) for MiniLM.

    Returns:
        ``n_batches`` tokenizer outputs (dicts of ``input_ids``, ``attention_mask``, ...),
        padded to the longest article of each batch and truncated at ``max_length``.
    """
    from quantbook.data import calibration_texts

    texts = calibration_texts(n_batches * batch_size, seed)
    return [
        dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                       max_length=max_length, return_tensors="pt"))
        for i in range(0, len(texts), batch_size)
    ]
