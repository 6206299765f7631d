"""Every quantization method on both models, measured in one process (``make bench``).

``make bench`` (``scripts/bench.py``) prints the table and writes :data:`LATEST` under
``_build/``. Chapter 09 renders the committed run, :data:`COMMITTED`; ``make bench-commit``
copies the latest run there, a separate step, so that running the benchmark never changes
what the book's stored outputs were computed from. Every speed-up is a ratio of medians
measured side by side with the float32 model in the same run, alternating
(:func:`quantbook.measure.compare_latency`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable

from quantbook.methods import (
    DynamicConfig,
    MethodConfig,
    StaticConfig,
    TorchaoDynamicConfig,
    TorchaoWeightOnlyConfig,
    WeightOnlyConfig,
)
from quantbook.records import BenchRecord
from quantbook.sweep import Sweep, Workload

MODELS = ("gpt", "minilm")
COMMITTED = pathlib.Path(__file__).parent / "results" / "bench.json"
LATEST = pathlib.Path("_build") / "bench" / "results.json"  # relative to the repository root


def bench_methods(workload: Workload) -> dict[str, MethodConfig]:
    """Every method the book teaches, as label -> config, on ``workload``'s Linear groups."""
    linears = workload.linear_targets
    everything = (*linears, "embeddings")

    def weights(bits, granularity="channel", group_size=None, targets=linears):
        return WeightOnlyConfig(bits=bits, granularity=granularity, group_size=group_size,
                                targets=targets)

    return {
        "weight-only int8": weights(8),
        "weight-only int4": weights(4),
        "weight-only int4 group32": weights(4, "group", 32),
        "weight-only int3 group32": weights(3, "group", 32),
        "weight-only int8, with embeddings": weights(8, targets=everything),
        "weight-only int4, with embeddings": weights(4, targets=everything),
        "torchao int8 weight-only": TorchaoWeightOnlyConfig(bits=8, targets=linears),
        "torchao int4 weight-only group32": TorchaoWeightOnlyConfig(
            bits=4, granularity="group", group_size=32, targets=linears),
        "dynamic int8 per-tensor": DynamicConfig(targets=linears),
        "dynamic int8 per-channel": DynamicConfig(targets=linears, granularity="channel"),
        "dynamic float16": DynamicConfig(targets=linears, dtype="float16"),
        "dynamic int8, embeddings 8-bit": DynamicConfig(targets=linears, embeddings_bits=8),
        "dynamic int8, embeddings 4-bit": DynamicConfig(targets=linears, embeddings_bits=4),
        "torchao int8 dynamic": TorchaoDynamicConfig(targets=linears),
        "static int8 (histogram)": StaticConfig(targets=linears, observer="histogram"),
        "static int8 (min-max)": StaticConfig(targets=linears, observer="minmax"),
    }


def run_workload(workload: Workload, *, only: Iterable[str] | None = None, timed: bool = True,
                 warmup: int = 2, repeats: int = 10,
                 progress: Callable[[str], None] | None = None) -> list[BenchRecord]:
    """Run the bench's methods (or those named in ``only``) on one workload, float32 first.

    ``timed=False`` skips the latency measurement: sizes and quality only, the figures that
    do not depend on the speed of the machine.
    """
    table = bench_methods(workload)
    chosen = list(table) if only is None else [only] if isinstance(only, str) else list(only)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        raise ValueError(f"only={unknown} names no method: choose from {list(table)}")
    return Sweep(workload).run({name: table[name] for name in chosen}, timed=timed,
                               warmup=warmup, repeats=repeats, progress=progress)


def workload(model: str) -> Workload:
    """The workload called ``model`` (``"gpt"`` or ``"minilm"``)."""
    from quantbook import workloads

    if model not in MODELS:
        raise ValueError(f"model={model!r} is not supported: choose from {MODELS}")
    return {"gpt": workloads.gpt_workload, "minilm": workloads.minilm_workload}[model]()


def run_bench(models: Iterable[str] = MODELS, **kwargs) -> list[BenchRecord]:
    """Run :func:`run_workload` on each model in ``models`` (``"gpt"``, ``"minilm"``)."""
    models = [models] if isinstance(models, str) else list(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"models={models} is not supported: choose from {MODELS}")
    return [r for m in models for r in run_workload(workload(m), **kwargs)]


def format_table(records: list[BenchRecord]) -> str:
    """A plain-text table of the records, one line per model and method (for a terminal)."""
    head = (f"{'model':7} {'method':36} {'size MB':>8} {'size':>6} {'q.bytes':>7} "
            f"{'latency ms':>11} {'speedup':>7}  metric")
    lines = [head, "-" * len(head)]
    for r in records:
        q = "" if r.quantized_bytes_ratio is None else f"{r.quantized_bytes_ratio:.1%}"
        lat = "" if r.latency_ms is None else f"{r.latency_ms:.1f}"
        speed = "" if r.speedup is None else f"{r.speedup:.2f}x"
        more = "".join(f", {k.removesuffix('_mean')} {v:.4f}" for k, v in r.secondary.items())
        lines.append(f"{r.model:7} {r.method:36} {r.size_bytes / 1e6:8.2f} {r.size_ratio:6.1%} "
                     f"{q:>7} {lat:>11} {speed:>7}  {r.metric} {r.value:.4f}{more}")
    return "\n".join(lines)
