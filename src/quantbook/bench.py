"""One table of every quantization method on both models, measured in one process.

``make bench`` (``scripts/bench.py``) prints it and writes :data:`RESULTS` (committed: chapter 06
draws its table and charts from it, and checks that the deterministic figures still reproduce).
Every speed-up is a ratio of medians measured side by side with the float32 model in the same
run, alternating (:func:`quantbook.measure.compare_latency`).
"""

from __future__ import annotations

import datetime
import io
import json
import pathlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from quantbook import measure

MODELS = ("gpt", "minilm")
RESULTS = pathlib.Path(__file__).parent / "results" / "bench.json"
QuantizeFn = Callable[[nn.Module, "Workload"], tuple[nn.Module, object]]


@dataclass
class Workload:
    """A float model with its quality metric and its timed call.

    Attributes:
        name: ``"gpt"`` or ``"minilm"``.
        model: the float32 model, eval mode.
        metric: name of the quality figure (``"perplexity"`` lower is better, ``"lee_pearson"``).
        evaluate: model -> quality figure, or a dict holding it under ``metric`` plus secondary
            figures (MiniLM: ``cosine_mean``, the embeddings' mean cosine to float32's).
        run: model -> None, the call that latency measures.
        calibration: batches for static quantization (training text, never evaluation text).
        linear_targets: the Linear groups every method quantizes on this model.
        timed_inputs: the batches ``run`` feeds the model, for :meth:`describe`.
    """

    name: str
    model: nn.Module
    metric: str
    evaluate: Callable[[nn.Module], float | dict[str, float]]
    run: Callable[[nn.Module], None]
    calibration: list
    linear_targets: tuple[str, ...]
    timed_inputs: list = field(default_factory=list)

    def describe(self) -> str:
        """The token-id shapes of the timed call and of the calibration batches."""
        return (f"timed call: {_shapes(self.timed_inputs)}; "
                f"calibration: {_shapes(self.calibration)}")


def _shapes(batches: list) -> str:
    """``"2 batches of token ids, 16x256 and 16x212"``: each batch's (B, T)."""
    ids = [b["input_ids"] if isinstance(b, dict) else b for b in batches]
    sizes = [f"{t.shape[0]}x{t.shape[1]}" for t in ids]
    listed = sizes[0] if len(sizes) == 1 else f"{', '.join(sizes[:-1])} and {sizes[-1]}"
    return f"{len(ids)} batch{'es' if len(ids) != 1 else ''} of token ids, {listed}"


def gpt_workload(latency_windows: int = 8) -> Workload:
    """The trained GPT: validation perplexity; latency of a batch of ``latency_windows`` windows."""
    from quantbook import data, gpt
    from quantbook.methods.static import gpt_calibration_batches

    model, tokenizer, _ = gpt.load_gpt()
    block = model.config.block_size
    val_ids = torch.tensor(tokenizer.encode(data.lee_split().validation), dtype=torch.long)
    batch = val_ids[: latency_windows * block].view(latency_windows, block)  # (B, T)
    return Workload(
        name="gpt", model=model, metric="perplexity",
        evaluate=lambda m: gpt.perplexity(m, val_ids, block)["perplexity"],
        run=lambda m: m(batch),
        calibration=gpt_calibration_batches(tokenizer, block, n_batches=8),
        linear_targets=("attention", "ffn", "head"), timed_inputs=[batch],
    )


def minilm_workload() -> Workload:
    """MiniLM: Lee Pearson correlation (and embedding cosine); latency of encoding the 50 Lee
    documents."""
    from quantbook import data, evaluate, minilm
    from quantbook.methods.static import minilm_calibration_batches

    model, tokenizer = minilm.load_minilm()
    docs = data.lee_documents()
    reference = evaluate.evaluate_minilm(model, tokenizer)["embeddings"]

    def quality(m: nn.Module) -> dict[str, float]:
        result = evaluate.evaluate_minilm(m, tokenizer, reference)
        return {"lee_pearson": result["pearson"], "cosine_mean": result["cosine_mean"]}

    batches = [
        dict(tokenizer(docs[i : i + 16], padding=True, truncation=True,
                       max_length=minilm.max_seq_length(), return_tensors="pt"))
        for i in range(0, len(docs), 16)
    ]

    def run(m: nn.Module) -> None:
        for batch in batches:
            m(**batch)

    return Workload(
        name="minilm", model=model, metric="lee_pearson",
        evaluate=quality, run=run,
        calibration=minilm_calibration_batches(tokenizer, n_batches=8),
        linear_targets=("attention", "ffn"), timed_inputs=batches,
    )


def methods(workload: Workload) -> dict[str, QuantizeFn]:
    """Every method the book teaches, as name -> function(model, workload) -> (model, report)."""
    from quantbook.methods import dynamic, static
    from quantbook.methods.torchao_activation import torchao_dynamic
    from quantbook.methods.torchao_weight_only import torchao_weight_only
    from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weights

    linears = workload.linear_targets
    everything = (*linears, "embeddings")

    def weights(bits, granularity="channel", group_size=None, targets=linears):
        config = WeightOnlyConfig(bits=bits, granularity=granularity, group_size=group_size,
                                  targets=targets)
        return lambda m, w: quantize_weights(m, config)

    def dyn(**kwargs):
        config = dynamic.DynamicConfig(targets=linears, **kwargs)
        return lambda m, w: dynamic.quantize_dynamic_model(m, config)

    def stat(observer):
        config = static.StaticConfig(targets=linears, observer=observer)
        return lambda m, w: static.quantize_static(m, config, static.run_batches,
                                                   (w.calibration,))

    return {
        "weight-only int8": weights(8),
        "weight-only int4": weights(4),
        "weight-only int4 group32": weights(4, "group", 32),
        "weight-only int3 group32": weights(3, "group", 32),
        "weight-only int8, with embeddings": weights(8, targets=everything),
        "weight-only int4, with embeddings": weights(4, targets=everything),
        "torchao int8 weight-only": lambda m, w: torchao_weight_only(m, bits=8, targets=linears),
        "torchao int4 weight-only group32": lambda m, w: torchao_weight_only(
            m, bits=4, granularity="group", group_size=32, targets=linears),
        "dynamic int8 per-tensor": dyn(),
        "dynamic int8 per-channel": dyn(granularity="channel"),
        "dynamic float16": dyn(dtype="float16"),
        "dynamic int8, embeddings 8-bit": dyn(embeddings_bits=8),
        "dynamic int8, embeddings 4-bit": dyn(embeddings_bits=4),
        "torchao int8 dynamic": lambda m, w: torchao_dynamic(m, linears),
        "static int8 (histogram)": stat("histogram"),
        "static int8 (min-max)": stat("minmax"),
    }


def _modules_bytes(model: nn.Module, names: Iterable[str]) -> int:
    """Serialized bytes of the named modules' state dicts (what a method really stores for them)."""
    buffer = io.BytesIO()
    torch.save({name: model.get_submodule(name).state_dict() for name in names}, buffer)
    return buffer.tell()


def run_workload(workload: Workload, *, only: Iterable[str] | None = None, warmup: int = 2,
                 repeats: int = 10, progress: Callable[[str], None] | None = None,
                 timed: bool = True) -> list[dict]:
    """Apply every method to one workload; return one record per method (float32 first).

    Args:
        workload: from :func:`gpt_workload` or :func:`minilm_workload`.
        only: method names to run (all by default); unknown names raise ``ValueError``.
        warmup: untimed alternating rounds before timing.
        repeats: timed rounds; each latency is the median over them.
        progress: optional callable told the name of each method as it starts.
        timed: ``False`` skips the latency measurement (latency fields ``None``, speed-up
            ``None``): sizes and quality only, the figures that do not depend on the machine.

    Returns:
        Records with ``model, method, size_bytes, size_ratio, quantized_bytes_ratio, latency_ms,
        latency_p10_ms, latency_p90_ms, speedup, metric, value, float_value, secondary,
        converted, threads, cpu``; ``secondary`` holds the workload's other quality figures.
    """
    table = methods(workload)
    chosen = list(table) if only is None else list(only)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        raise ValueError(f"only={unknown} names no method: choose from {list(table)}")
    base = workload.model
    base_size = measure.size_bytes(base)
    base_value, base_secondary = _quality(workload, base)
    records = [_record(workload, "float32", base_size, base_size, None, None, base_value,
                       base_value, 0, base_secondary)]
    for name in chosen:
        if progress is not None:
            progress(name)
        quantized, report = table[name](base, workload)
        converted = list(report.converted)
        timings = None if not timed else measure.compare_latency(
            {"float32": lambda: workload.run(base),
             name: lambda q=quantized: workload.run(q)},
            warmup=warmup, repeats=repeats)
        ratio = _modules_bytes(quantized, converted) / _modules_bytes(base, converted)
        value, secondary = _quality(workload, quantized)
        records.append(_record(workload, name, measure.size_bytes(quantized), base_size, timings,
                               ratio, value, base_value, len(converted), secondary))
        if timed and records[0]["latency_ms"] is None:  # float: its first side-by-side run
            records[0].update(_latency_fields(timings["float32"]))
    return records


def _quality(workload: Workload, model: nn.Module) -> tuple[float, dict[str, float]]:
    """The workload's metric and its secondary figures (an empty dict when there are none)."""
    result = workload.evaluate(model)
    if not isinstance(result, dict):
        return float(result), {}
    if workload.metric not in result:
        raise KeyError(f"evaluate returned {sorted(result)} without metric={workload.metric!r}: "
                       "return the metric under its name")
    return float(result[workload.metric]), {
        k: float(v) for k, v in result.items() if k != workload.metric}


def _latency_fields(timing: measure.Timing) -> dict:
    return {"latency_ms": timing.median_ms, "latency_p10_ms": timing.p10_ms,
            "latency_p90_ms": timing.p90_ms, "threads": timing.threads, "cpu": timing.cpu}


def _record(workload: Workload, method: str, size: int, base_size: int, timings, ratio,
            value: float, base_value: float, n_converted: int, secondary: dict) -> dict:
    record = {
        "model": workload.name, "method": method, "size_bytes": size,
        "size_ratio": size / base_size, "quantized_bytes_ratio": ratio,
        "latency_ms": None, "latency_p10_ms": None, "latency_p90_ms": None,
        "speedup": 1.0, "metric": workload.metric, "value": value, "float_value": base_value,
        "secondary": secondary, "converted": n_converted, "threads": torch.get_num_threads(),
        "cpu": measure.cpu_model(),
    }
    if timings is not None:
        record.update(_latency_fields(timings[method]))
        record["speedup"] = measure.speedup(timings["float32"], timings[method])
    elif method != "float32":
        record["speedup"] = None
    return record


def run_bench(models: Iterable[str] = MODELS, **kwargs) -> list[dict]:
    """Run :func:`run_workload` on each model in ``models`` (``"gpt"``, ``"minilm"``)."""
    models = [models] if isinstance(models, str) else list(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"models={models} is not supported: choose from {MODELS}")
    loaders = {"gpt": gpt_workload, "minilm": minilm_workload}
    return [r for m in models for r in run_workload(loaders[m](), **kwargs)]


def format_table(records: list[dict]) -> str:
    """A plain-text table of the records, one line per model and method."""
    head = (f"{'model':7} {'method':36} {'size MB':>8} {'size':>6} {'q.bytes':>7} "
            f"{'latency ms':>11} {'speedup':>7}  metric")
    lines = [head, "-" * len(head)]
    for r in records:
        q = "" if r["quantized_bytes_ratio"] is None else f"{r['quantized_bytes_ratio']:.1%}"
        lat = "" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
        speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        more = "".join(f", {k.removesuffix('_mean')} {v:.4f}"
                       for k, v in r.get("secondary", {}).items())
        lines.append(
            f"{r['model']:7} {r['method']:36} {r['size_bytes'] / 1e6:8.2f} "
            f"{r['size_ratio']:6.1%} {q:>7} {lat:>11} {speed:>7}  "
            f"{r['metric']} {r['value']:.4f}{more}"
        )
    return "\n".join(lines)


def save_results(records: list[dict], path: str | pathlib.Path = RESULTS, *,
                 machine: dict | None = None, repeats: int | None = None,
                 seconds: float | None = None) -> pathlib.Path:
    """Write ``records`` as JSON with the machine that measured them; return the path."""
    from quantbook.machine import machine_report

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "created": datetime.date.today().isoformat(),
        "machine": machine_report() if machine is None else machine,
        "repeats": repeats, "seconds": seconds, "records": records,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def load_results(path: str | pathlib.Path = RESULTS) -> tuple[dict, list[dict]]:
    """Read what :func:`save_results` wrote: ``(meta, records)``, meta without the records."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r} holds no bench results: run `make bench` "
                                "to measure them (it writes quantbook/results/bench.json)")
    payload = json.loads(path.read_text())
    records = payload.pop("records")
    return payload, records
