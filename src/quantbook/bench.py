"""Every quantization method on both models, measured in one process (``make bench``).

``make bench`` (``scripts/bench.py``) prints the table and writes :data:`LATEST` under
``_build/``. Chapter 09 renders the committed run, :data:`COMMITTED`; ``make bench-commit``
copies the latest run there, a separate step, so that running the benchmark never changes
what the book's stored outputs were computed from. Every speed-up is a ratio of medians
measured side by side with the float32 model in the same run, alternating
(:func:`quantbook.measure.compare_latency`).

Each chapter that teaches methods adds its rows (:func:`bench_chapters`): chapters 03-05 in
:func:`bench_methods`, chapter 06's compiled rows (run in a second, compiled
:class:`~quantbook.sweep.Sweep` after a ``"float32 compiled"`` row), chapter 07's outlier
remedies and chapter 08's GPTQ, AWQ and mixed bit widths.
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
    inductor,
    quantize,
)
from quantbook.records import BenchRecord
from quantbook.sweep import Sweep, Workload

MODELS = ("gpt", "minilm")
COMMITTED = pathlib.Path(__file__).parent / "results" / "bench.json"
# an earlier committed run of chapters 03-05's rows on another machine (2 cores with AVX-512
# VNNI, 2026-11-28; MiniLM timed on all 50 articles, 10 rounds a row): chapter 09 sets its
# speed-ups beside COMMITTED's
OTHER_MACHINE = pathlib.Path(__file__).parent / "results" / "bench_avx512_vnni.json"
LATEST = pathlib.Path("_build") / "bench" / "results.json"  # relative to the repository root
CHAPTERS = ("03_weight_quantization", "04_dynamic_quantization", "05_static_quantization",
            "06_compiled_int8", "07_activation_outliers", "08_below_8_bits")
COMPILED_CHAPTERS = ("06_compiled_int8",)  # rows that run through Sweep(compiled=True)
BASIC_CHAPTERS = CHAPTERS[:3]  # bench_methods: the rows of the committed run chapter 09 checks
# the bench times MiniLM on one batch of 16 articles (quality uses all 50) and ends a row's
# timing once its rounds pass MAX_TIMING_S (at least 3 rounds): with every chapter's rows, on a
# 2-core CPU, ten rounds of all 50 articles per row took most of an hour
TIMED_ARTICLES = 16
MAX_TIMING_S = 10.0


def bench_methods(workload: Workload) -> dict[str, MethodConfig]:
    """The methods of chapters 03-05, as label -> config, on ``workload``'s Linear groups."""
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


def bench_chapters(workload: Workload) -> dict[str, dict[str, MethodConfig]]:
    """Every row of ``make bench``: chapter (:data:`CHAPTERS`) -> label -> config.

    Reads only ``workload.name`` and ``workload.linear_targets``, so a stand-in such as
    ``Workload("gpt", None, "perplexity", None)`` lists the labels without loading a model.
    """
    from quantbook import explore_lowbit, explore_outliers
    from quantbook.methods import compiled

    basics = bench_methods(workload)
    teaches = {"03_weight_quantization": (WeightOnlyConfig, TorchaoWeightOnlyConfig),
               "04_dynamic_quantization": (DynamicConfig, TorchaoDynamicConfig),
               "05_static_quantization": (StaticConfig,)}
    chapters = {chapter: {label: config for label, config in basics.items()
                          if type(config) in kinds} for chapter, kinds in teaches.items()}
    return {**chapters, "06_compiled_int8": compiled.bench_configs(workload),
            "07_activation_outliers": explore_outliers.bench_configs(workload),
            "08_below_8_bits": explore_lowbit.bench_configs(workload)}


def row_chapters(models: Iterable[str] = MODELS) -> dict[str, str]:
    """Label -> chapter number (``"06"``) of every row the bench runs on ``models``, float
    rows included (``"float32"`` -> ``""``); for :func:`format_table` and for checking labels
    before loading a model."""
    models = [models] if isinstance(models, str) else list(models)
    rows = {"float32": "", "float32 compiled": COMPILED_CHAPTERS[0][:2]}
    for model in models:
        for chapter, configs in bench_chapters(Workload(model, None, "", None)).items():
            rows.update(dict.fromkeys(configs, chapter[:2]))
    return rows


def _quantize_fn(configs: Iterable[MethodConfig]) -> Callable:
    """:func:`quantbook.methods.quantize`, or chapter 08's ``quantize_lowbit`` when a mixed
    plan (outside ``METHODS``) is among ``configs``: it hands every other config to
    ``quantize``, without the sweep's shared packed weight-only modules."""
    from quantbook.explore_lowbit import quantize_lowbit
    from quantbook.methods.mixed import MixedConfig

    return quantize_lowbit if any(isinstance(c, MixedConfig) for c in configs) else quantize


def _chosen(name: str, table: dict[str, dict[str, MethodConfig]], only: Iterable[str] | None,
            chapters: Iterable[str]) -> list[str]:
    """The labels :func:`run_workload` runs from ``table`` (:func:`bench_chapters` of the
    workload called ``name``)."""
    if only is None:
        chapters = [chapters] if isinstance(chapters, str) else list(chapters)
        bad = [c for c in chapters if c not in table]
        if bad or not chapters:
            raise ValueError(f"chapters={chapters} is not supported: choose from {CHAPTERS}")
        return [label for chapter in chapters for label in table[chapter]]
    chosen = [only] if isinstance(only, str) else list(only)
    labels = [label for configs in table.values() for label in configs]
    unknown = [name for name in chosen if name not in labels]
    if unknown:
        raise ValueError(f"only={unknown} names no method of {name}: choose from {labels}")
    return chosen


def run_workload(workload: Workload, *, only: Iterable[str] | None = None,
                 chapters: Iterable[str] = BASIC_CHAPTERS, timed: bool = True,
                 warmup: int = 2, repeats: int = 10, max_s: float | None = MAX_TIMING_S,
                 progress: Callable[[str], None] | None = None) -> list[BenchRecord]:
    """Run the bench's rows on one workload, float32 first, then the rows in order.

    Args:
        only: labels of rows from any chapter (one label as a string); overrides
            ``chapters``.
        chapters: whose rows to run when ``only`` is ``None``: the default, chapters 03-05,
            are the rows of the committed run chapter 09 checks; :data:`CHAPTERS` is every row.
        timed: ``False`` skips the latency measurement: sizes and quality only, the figures
            that do not depend on the speed of the machine.
        repeats, max_s: each row is timed for ``repeats`` alternating rounds, or ends after
            the round that passes ``max_s`` seconds, 3 rounds in (``None``: every round).
        progress: told each label as it starts.

    Chapter 06's rows run in a second sweep, ``Sweep(workload, compiled=True)``, whose
    ``"float32 compiled"`` row comes just before them; they need a C++ compiler, and without
    one this raises ``RuntimeError`` before running anything.
    """
    table = bench_chapters(workload)
    rows = {label: (chapter, config) for chapter, configs in table.items()
            for label, config in configs.items()}
    chosen = _chosen(workload.name, table, only, chapters)
    compiled = [label for label in chosen if rows[label][0] in COMPILED_CHAPTERS]
    eager = {label: rows[label][1] for label in chosen if label not in compiled}
    if compiled:
        inductor.check_cpp_compiler()  # before any work: the compiled rows come last
    settings = dict(timed=timed, warmup=warmup, repeats=repeats, max_s=max_s,
                    progress=progress)
    found = {}
    if eager or not compiled:
        sweep = Sweep(workload, _quantize_fn(eager.values()))
        found = {r.method: r for r in sweep.run(eager, **settings)}
    if compiled:  # the eager sweep's float32 row, timed beside the eager rows, wins
        twin = Sweep(workload, compiled=True).run(
            {label: rows[label][1] for label in compiled}, **settings)
        found = {r.method: r for r in twin} | found
    order = ["float32", *chosen]
    if compiled:
        order.insert(order.index(compiled[0]), "float32 compiled")
    return [found[label] for label in order]


def workload(model: str, timed_articles: int | None = TIMED_ARTICLES) -> Workload:
    """The workload called ``model`` (``"gpt"`` or ``"minilm"``) as the bench measures it:
    MiniLM timed on its first ``timed_articles`` Lee articles (``None``: all 50), quality on
    all of them."""
    from quantbook import workloads

    if model not in MODELS:
        raise ValueError(f"model={model!r} is not supported: choose from {MODELS}")
    if model == "gpt":
        return workloads.gpt_workload()
    return workloads.minilm_workload(timed_articles)


def run_bench(models: Iterable[str] = MODELS, *, chapters: Iterable[str] = CHAPTERS,
              **kwargs) -> list[BenchRecord]:
    """Run :func:`run_workload` on each model in ``models`` (``"gpt"``, ``"minilm"``): every
    chapter's rows unless ``chapters`` or ``only`` says otherwise."""
    models = [models] if isinstance(models, str) else list(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"models={models} is not supported: choose from {MODELS}")
    for m in models:  # every label and chapter checked before a model loads
        _chosen(m, bench_chapters(Workload(m, None, "", None)), kwargs.get("only"), chapters)
    return [r for m in models
            for r in run_workload(workload(m), chapters=chapters, **kwargs)]


def format_table(records: list[BenchRecord], chapters: dict[str, str] | None = None) -> str:
    """A plain-text table of the records, one line per model and method (for a terminal).

    ``chapters`` (label -> chapter number, :func:`row_chapters`) adds a column naming the
    chapter that teaches each method. Compiled rows also show the speed-up over float32
    compiled in the same rounds ("vs comp.") and the seconds their first call took to compile.
    """
    ch = "" if chapters is None else f"{'ch':2} "
    head = (f"{'model':7} {ch}{'method':40} {'size MB':>8} {'size':>6} {'q.bytes':>7} "
            f"{'latency ms':>11} {'speedup':>7} {'vs comp.':>8} {'compile s':>9}  metric")
    lines = [head, "-" * len(head)]

    def cell(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for r in records:
        q = cell(r.quantized_bytes_ratio, ".1%")
        lat = cell(r.latency_ms, ".1f")
        speed = "" if r.speedup is None else f"{r.speedup:.2f}x"
        twin = "" if r.speedup_vs_compiled is None else f"{r.speedup_vs_compiled:.2f}x"
        more = "".join(f", {k.removesuffix('_mean')} {v:.4f}" for k, v in r.secondary.items())
        ch = "" if chapters is None else f"{chapters.get(r.method, ''):2} "
        lines.append(f"{r.model:7} {ch}{r.method:40} {r.size_bytes / 1e6:8.2f} "
                     f"{r.size_ratio:6.1%} {q:>7} {lat:>11} {speed:>7} {twin:>8} "
                     f"{cell(r.compile_s, '.0f'):>9}  {r.metric} {r.value:.4f}{more}")
    return "\n".join(lines)
