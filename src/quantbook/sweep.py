"""One path from a method to a record: quantize on a workload, measure, return BenchRecords.

``make bench``, chapter 09 and the chapters' sweeps and explorers all run methods through
:class:`Sweep`: it quantizes the workload's model with a config (or measures a model built some
other way), evaluates it, measures its bytes, optionally times it side by side with the float
model, and returns a :class:`~quantbook.records.BenchRecord`. Quantized models, reports and
untimed records are kept per config, so that asking twice costs nothing. ``Sweep(workload,
compiled=True)`` compiles every model it builds (and the float model, as a second baseline) with
:func:`quantbook.methods.inductor.compile_model`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from torch import nn

from quantbook import measure
from quantbook.methods import MethodConfig, QuantReport, WeightOnlyConfig, inductor, quantize
from quantbook.methods.weight_only import quantize_weight_only
from quantbook.records import FLOAT_FAMILY, BenchRecord


@dataclass
class Workload:
    """A float model with its quality metric and its timed call.

    Attributes:
        name: ``"gpt"``, ``"minilm"``, or a chapter's own name.
        model: the float32 model, eval mode.
        metric: name of the quality figure (``"perplexity"``: lower is better).
        evaluate: model -> quality figure, or a dict holding it under ``metric`` plus secondary
            figures (MiniLM: ``cosine_mean``, the embeddings' mean cosine to float32's).
        run: model -> anything, the call that latency measures (``None``: not timed).
        calibration: batches for the methods that calibrate (training text only).
        linear_targets: the Linear groups every method quantizes on this model.
        timed_inputs: the batches ``run`` feeds the model, for :meth:`describe`.
    """

    name: str
    model: nn.Module
    metric: str
    evaluate: Callable[[nn.Module], float | Mapping[str, float]]
    run: Callable[[nn.Module], object] | None = None
    calibration: list = field(default_factory=list)
    linear_targets: tuple[str, ...] = ("attention", "ffn")
    timed_inputs: list = field(default_factory=list)

    def describe(self) -> str:
        """The token-id shapes of the timed call and of the calibration batches."""
        return (f"timed call: {_shapes(self.timed_inputs)}; "
                f"calibration: {_shapes(self.calibration)}")

    def quality(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        """The metric and the secondary figures (an empty dict when there are none)."""
        result = self.evaluate(model)
        if not isinstance(result, Mapping):
            return float(result), {}
        if self.metric not in result:
            raise KeyError(f"evaluate returned {sorted(result)} without metric="
                           f"{self.metric!r}: return the metric under its name")
        return float(result[self.metric]), {k: float(v) for k, v in result.items()
                                            if k != self.metric}


def _shapes(batches: list) -> str:
    """``"2 batches of token ids, 16x256 and 16x212"``: each batch's (B, T)."""
    if not batches:
        return "none"
    ids = [b["input_ids"] if isinstance(b, dict) else b for b in batches]
    sizes = [f"{t.shape[0]}x{t.shape[1]}" for t in ids]
    listed = sizes[0] if len(sizes) == 1 else f"{', '.join(sizes[:-1])} and {sizes[-1]}"
    return f"{len(ids)} batch{'es' if len(ids) != 1 else ''} of token ids, {listed}"


def _given_quality(quality: object, metric: str) -> tuple[float, dict[str, float]]:
    """``(value, secondary)`` checked: a finite metric value and a dict of named floats."""
    if (not isinstance(quality, tuple) or len(quality) != 2
            or not isinstance(quality[1], dict)):
        raise TypeError(f"quality={quality!r} is not a (value, secondary dict) pair: pass e.g. "
                        "stored_quality.load()[method].quality()")
    value, secondary = quality
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"quality holds {metric}={value!r}: expected a number")
    return float(value), {k: float(v) for k, v in secondary.items()}


class Sweep:
    """Run methods on one workload and keep what they built.

    Args:
        workload: the float model, its metric and its timed call.
        quantize_fn: ``quantize_fn(model, config, batches) -> (model, report)``;
            :func:`quantbook.methods.quantize` by default. Weight-only configs share their
            packed modules across the sweep (``quantize_weight_only(..., cache=...)``).
        packed: another sweep's ``packed`` dict, to share its packed modules (same model).
        cache_weights: packed Linears keep their dequantized weight (faster repeated calls,
            such as sampling text; leave it off when timing weight-only methods honestly).
        compiled: compile every quantized model with inductor (freezing on); :meth:`run`
            then adds a ``"float32 compiled"`` record and timed records carry
            ``compile_s`` and the speed-up against the compiled float model too. Quality is
            evaluated on the model inside each compiled wrapper: compiling computes the same
            function, and evaluating compiled models would recompile for every new input
            shape of the evaluation (minutes each on a small CPU).
    """

    def __init__(self, workload: Workload, quantize_fn: Callable = quantize, *,
                 packed: dict | None = None, cache_weights: bool = False,
                 compiled: bool = False) -> None:
        if not isinstance(workload, Workload):
            raise TypeError(f"workload is a {type(workload).__name__}: expected a Workload")
        if packed is not None and not isinstance(packed, dict):
            raise TypeError(f"packed is a {type(packed).__name__}: pass another sweep's "
                            "packed dict, or None")
        self.workload, self.quantize_fn = workload, quantize_fn
        self.cache_weights = cache_weights
        if not isinstance(compiled, bool):
            raise TypeError(f"compiled={compiled!r} is not supported: pass True or False")
        self.compiled = compiled
        self._compiled_float: nn.Module | None = None
        self.packed: dict = {} if packed is None else packed  # shared packed modules
        self._built: dict[MethodConfig, tuple[nn.Module, QuantReport]] = {}
        self._records: dict[tuple, BenchRecord] = {}
        self._sizes: dict = {}  # config, or converted names of the float model -> bytes
        self._float: BenchRecord | None = None

    def quantize(self, config: MethodConfig) -> tuple[nn.Module, QuantReport]:
        """The quantized model and its report for ``config`` (built once)."""
        if config not in self._built:
            model = self.workload.model
            if type(config) is WeightOnlyConfig and self.quantize_fn is quantize:
                self._built[config] = quantize_weight_only(
                    model, config, cache=self.packed, cache_weight=self.cache_weights)
            else:
                self._built[config] = self.quantize_fn(model, config, self.workload.calibration)
            if self.compiled:
                quantized, report = self._built[config]
                self._built[config] = inductor.compile_model(quantized), report
        return self._built[config]

    def compiled_float(self) -> nn.Module:
        """The float model compiled with the settings the quantized models get (built once)."""
        if self._compiled_float is None:
            self._compiled_float = inductor.compile_model(self.workload.model)
        return self._compiled_float

    def quantized(self, config: MethodConfig) -> nn.Module:
        """The quantized model for ``config`` (built once)."""
        return self.quantize(config)[0]

    def size_bytes(self, config: MethodConfig) -> int:
        """Serialized bytes of the quantized model for ``config``, without evaluating it."""
        if config not in self._sizes:
            self._sizes[config] = measure.size_bytes(self.quantized(config))
        return self._sizes[config]

    def _float_bytes(self, names: tuple[str, ...]) -> int:
        """Serialized bytes of the float model's modules ``names`` (measured once per set)."""
        if names not in self._sizes:
            self._sizes[names] = measure.size_bytes(self.workload.model, names)
        return self._sizes[names]

    def float_record(self) -> BenchRecord:
        """The float32 model's record (untimed; measured once)."""
        if self._float is None:
            model = self.workload.model
            value, secondary = self.workload.quality(model)
            if math.isnan(value):
                raise ValueError(f"workload {self.workload.name!r}: evaluate gives NaN for the "
                                 "float model; fix the evaluation before comparing methods by it")
            size = measure.size_bytes(model)
            self._float = BenchRecord(
                model=self.workload.name, method="float32", family=FLOAT_FAMILY,
                metric=self.workload.metric, value=value, float_value=value, size_bytes=size,
                size_ratio=1.0, secondary=secondary)
        return self._float

    def measure(self, label: str, model: nn.Module, report: QuantReport, *,
                timed: bool = False, warmup: int = 2, repeats: int = 10,
                max_s: float | None = None,
                quality: tuple[float, dict[str, float]] | None = None) -> BenchRecord:
        """Measure an already quantized ``model`` (built by ``report``'s method) as a record.

        ``quality``: ``(value, secondary)`` measured elsewhere for this very model (e.g.
        :meth:`quantbook.stored_quality.StoredQuality.quality`, checked by the caller), used
        instead of evaluating the model again; size and speed are still measured here.
        """
        reference = self.float_record()
        inner = getattr(model, "inner", model)  # a compiled model keeps the model it compiled
        if quality is None:
            value, secondary = self.workload.quality(inner if self.compiled else model)
        else:
            value, secondary = _given_quality(quality, self.workload.metric)
        size = measure.size_bytes(model)
        converted = tuple(report.converted)
        ratio = None
        if all(_has_submodule(inner, name) for name in converted):
            ratio = measure.size_bytes(inner, converted) / self._float_bytes(converted)
        record = BenchRecord(
            model=self.workload.name, method=label, family=report.family,
            metric=self.workload.metric, value=value, float_value=reference.value,
            size_bytes=size, size_ratio=size / reference.size_bytes,
            quantized_bytes_ratio=ratio, converted=len(converted), secondary=secondary,
            compile_s=getattr(model, "first_call_s", None))
        if not timed:
            return record
        return self.time(record, model, warmup=warmup, repeats=repeats, max_s=max_s)

    def time(self, record: BenchRecord, model: nn.Module, *, warmup: int = 2,
             repeats: int = 10, max_s: float | None = None) -> BenchRecord:
        """``record`` with latencies: ``model`` timed alternately with the float model, for
        ``repeats`` rounds, or fewer (at least 3) once the timed rounds pass ``max_s`` seconds
        (:func:`quantbook.measure.compare_latency`)."""
        run = self.workload.run
        if run is None:
            raise ValueError(f"workload {self.workload.name!r} has no run call to time: set "
                             "Workload.run, or pass timed=False")
        base = self.workload.model
        fns = {"float32": lambda: run(base)}
        if self.compiled:
            compiled_base = self.compiled_float()
            fns["float32 compiled"] = lambda: run(compiled_base)
        fns["quantized"] = lambda: run(model)
        timings = measure.compare_latency(fns, warmup=warmup, repeats=repeats, max_s=max_s,
                                          min_repeats=min(3, repeats))
        fast, slow = timings["quantized"], timings["float32"]
        record = replace(record, latency_ms=fast.median_ms, latency_p10_ms=fast.p10_ms,
                         latency_p90_ms=fast.p90_ms, float_latency_ms=slow.median_ms,
                         speedup=measure.speedup(slow, fast), threads=fast.threads,
                         cpu=fast.cpu, compile_s=getattr(model, "first_call_s", None),
                         rounds=fast.n_repeats)
        if self.compiled:
            twin = timings["float32 compiled"]
            record = replace(record, compiled_float_latency_ms=twin.median_ms,
                             speedup_vs_compiled=measure.speedup(twin, fast))
        return record

    def compiled_float_record(self) -> BenchRecord:
        """The compiled float model's record (untimed; measured once; compiles on first use)."""
        key = ("float32 compiled",)
        if key not in self._records:
            reference = self.float_record()  # the same model: the same quality
            self._records[key] = replace(reference, method="float32 compiled",
                                         family=f"{FLOAT_FAMILY} (compiled)",
                                         compile_s=self.compiled_float().first_call_s)
        return self._records[key]

    def record(self, config: MethodConfig, label: str | None = None, *, timed: bool = False,
               warmup: int = 2, repeats: int = 10, max_s: float | None = None,
               quality: tuple[float, dict[str, float]] | None = None) -> BenchRecord:
        """Quantize with ``config`` and measure; untimed records are kept per config.

        ``quality``: the model's ``(value, secondary)`` measured elsewhere (see :meth:`measure`);
        it applies when the record is first made.
        """
        label = config.label if label is None else label
        key = (config, label)
        if key not in self._records:
            model, report = self.quantize(config)
            self._records[key] = self.measure(label, model, report, quality=quality)
        elif quality is not None and _given_quality(quality, self.workload.metric) != (
                self._records[key].value, self._records[key].secondary):
            raise ValueError(f"quality={quality!r} differs from the record of {label!r} made "
                             "before: pass it on the first call only, or the same value")
        record = self._records[key]
        if timed:
            record = self.time(record, self.quantized(config), warmup=warmup, repeats=repeats,
                               max_s=max_s)
        return record

    def run(self, configs: Mapping[str, MethodConfig] | Sequence[MethodConfig], *,
            timed: bool = False, warmup: int = 2, repeats: int = 10,
            max_s: float | None = None,
            progress: Callable[[str], None] | None = None) -> list[BenchRecord]:
        """The float32 record, then one record per config, in order.

        Args:
            configs: label -> config, or configs (labelled by ``config.label``).
            timed: time each quantized model alternately with the float model (each record
                then carries its own ``float_latency_ms``; the float row gets the first).
            max_s: end each record's timing after the round that passes this many seconds, at
                least 3 rounds in (``None``: ``repeats`` rounds each; see :meth:`time`).
            progress: told each label as it starts.
        """
        if isinstance(configs, MethodConfig):
            raise TypeError(f"configs is a {type(configs).__name__}: pass a list of configs "
                            "(or a dict of label -> config)")
        items = (list(configs.items()) if isinstance(configs, Mapping)
                 else [(c.label, c) for c in configs])
        bad = [type(c).__name__ for _, c in items if not isinstance(c, MethodConfig)]
        if bad:
            raise TypeError(f"configs holds a {bad[0]}: expected method configs such as "
                            "WeightOnlyConfig(bits=4)")
        labels = [label for label, _ in items]
        if len(set(labels)) != len(labels):
            raise ValueError(f"configs repeats a label among {labels}: give each its own")
        records = []
        for label, config in items:
            if progress is not None:
                progress(label)
            records.append(self.record(config, label, timed=timed, warmup=warmup,
                                       repeats=repeats, max_s=max_s))
        reference = self.float_record()
        if timed and records:
            first = records[0]
            reference = replace(reference, latency_ms=first.float_latency_ms,
                                float_latency_ms=first.float_latency_ms, speedup=1.0,
                                threads=first.threads, cpu=first.cpu, rounds=first.rounds)
        if not self.compiled:
            return [reference, *records]
        twin = self.compiled_float_record()
        if timed and records:
            first = records[0]
            latency = first.compiled_float_latency_ms
            twin = replace(twin, latency_ms=latency, float_latency_ms=first.float_latency_ms,
                           speedup=first.float_latency_ms / latency,
                           compiled_float_latency_ms=latency, speedup_vs_compiled=1.0,
                           threads=first.threads, cpu=first.cpu, rounds=first.rounds)
        return [reference, twin, *records]



def _has_submodule(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is a submodule of ``model`` (an exported graph has other names)."""
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
