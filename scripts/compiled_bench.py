"""Compiled int8 on both models: float eager vs float compiled vs torchao and PT2E compiled.

Usage: python scripts/compiled_bench.py [--models gpt minilm] [--repeats 5] [--out FILE]
(default FILE: _build/bench/compiled.json; `make bench-compiled` writes the committed
src/quantbook/results/compiled.json that the compiled-int8 chapter loads), or
python scripts/compiled_bench.py --combine RUN.json RUN.json --out FILE to join runs made
model by model (each model taken from the last run that measured it).

For each model, in one process, with one torch thread: build every variant, record what its
first call costs (the compile: wall and CPU seconds, graphs), what inductor generated
(kernel census, fused operations) and how far its outputs are from the model it compiled;
then measure quality (on the model before compiling: compiled evaluation would recompile for
every new shape) and latency side by side - float32 eager, float32 compiled and the candidate
alternating in the same rounds - and, on the GPT, what new input shapes cost a compiled
model. Eager rows (chapter 05's static int8, torchao dynamic and the PT2E graph uncompiled)
are timed in the same rounds.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import torch

from quantbook.quiet import silence_known_noise

silence_known_noise()

import psutil  # noqa: E402

from quantbook import bench, explore_compiled, machine  # noqa: E402
from quantbook.methods import StaticConfig, quantize  # noqa: E402
from quantbook.methods.compiled import PT2EConfig, bench_configs, quantize_pt2e  # noqa: E402
from quantbook.records import BenchRecord, write_json_atomic  # noqa: E402
from quantbook.sweep import Sweep  # noqa: E402

LATEST = "_build/bench/compiled.json"
NEW_SHAPES = ((8, 64), (4, 100), (2, 37))  # GPT (batch, seq) after the timed 8 x 128


def cpu_seconds() -> float:
    """CPU seconds of this process and of its compile workers and compiler runs."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def quantize_any(model, config, batches):
    """:func:`quantbook.methods.quantize`, plus PT2E (until it joins ``METHODS``)."""
    if isinstance(config, PT2EConfig):
        return quantize_pt2e(model, config, batches)
    return quantize(model, config, batches)


def timed_workload(name: str):
    """The bench workload; MiniLM timed on one batch of 16 Lee documents (the issue's call)."""
    workload = bench.workload(name, timed_articles=None)  # all 50, as committed
    if name == "minilm":
        batch = workload.timed_inputs[0]
        workload = dataclasses.replace(workload, run=lambda m: m(**batch),
                                       timed_inputs=[batch])
    return workload


def first_call(label: str, model, workload, kernels: dict, costs: dict) -> None:
    """Run the timed call once (it compiles) and keep what it cost and what it generated."""
    graphs, cpu, start = explore_compiled.graphs_compiled(), cpu_seconds(), time.perf_counter()
    with explore_compiled.capture_code() as codes, torch.inference_mode():
        workload.run(model)
    costs[label] = {"compile_s": time.perf_counter() - start,
                    "compile_cpu_s": cpu_seconds() - cpu,
                    "graphs": explore_compiled.graphs_compiled() - graphs}
    kernels[label] = {"census": dict(explore_compiled.kernel_census(codes).most_common()),
                      "fused": explore_compiled.fused_kernels(codes, top=6)}


def agreement(workload, compiled_model) -> dict:
    """How far a compiled model's first output is from the model it compiled, timed call.

    :func:`quantbook.explore_compiled.agreement`: ``relative_difference`` over all positions
    and, for MiniLM's padded batch, ``relative_difference_real`` over real tokens (the ones
    mean pooling keeps) and ``relative_difference_padding``. For scale, also how far the
    reference and the compiled model each are from the float model (``reference_vs_float``,
    ``compiled_vs_float``; real tokens where there is a mask): a q/dq graph rounds to codes,
    so the compiled model's different float rounding flips some codes and can differ from its
    reference about as much as the reference differs from float, while staying as close to
    float as the reference is.
    """
    with torch.inference_mode():
        fast = workload.run(compiled_model)[0]
        reference = workload.run(compiled_model.inner)[0]
        float_out = workload.run(workload.model)[0]
    batch = workload.timed_inputs[0]
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    result = explore_compiled.agreement(reference, fast, mask)
    key = "relative_difference" if mask is None else "relative_difference_real"
    for label, out in (("reference_vs_float", reference), ("compiled_vs_float", fast)):
        result[label] = explore_compiled.agreement(float_out, out, mask)[key]
    return result


def run_model(name: str, repeats: int, log) -> tuple[list[BenchRecord], dict]:
    workload = timed_workload(name)
    runner = Sweep(workload, quantize_any, compiled=True)
    kernels, costs = {}, {}
    log(f"{name}: float32 compiled")
    first_call("float32 compiled", runner.compiled_float(), workload, kernels, costs)
    configs = bench_configs(workload)
    for label, config in configs.items():
        log(f"{name}: {label} (build)")
        start, cpu = time.perf_counter(), cpu_seconds()
        model = runner.quantized(config)
        build = {"build_s": time.perf_counter() - start, "build_cpu_s": cpu_seconds() - cpu}
        first_call(label, model, workload, kernels, costs)
        costs[label].update(build, **agreement(workload, model))
    records = runner.run(configs, timed=True, warmup=2, repeats=repeats, progress=log)
    # the same quantized models uncompiled, and chapter 05's eager static recipe
    eager = {"torchao int8 dynamic": "torchao int8 dynamic, compiled",
             "PT2E static int8, not compiled": "PT2E static int8, compiled"}
    built = {label: runner.quantize(configs[of]) for label, of in eager.items()}
    built = {label: (model.inner, report) for label, (model, report) in built.items()}
    log(f"{name}: static int8 (histogram)")
    static = StaticConfig(targets=workload.linear_targets)
    built["static int8 (histogram)"] = quantize(workload.model, static, workload.calibration)
    for label, (model, report) in built.items():
        log(f"{name}: {label}")
        records.append(runner.measure(label, model, report, timed=True, warmup=2,
                                      repeats=repeats))
    shapes = []
    if name == "gpt":
        log("gpt: new shapes on float32 compiled")
        ids = workload.timed_inputs[0]
        shapes = explore_compiled.shape_costs(runner.compiled_float(),
                                              lambda b, t: ids[:b, :t].clone(), NEW_SHAPES)
    return records, {"kernels": kernels, "costs": costs, "shapes": shapes}


def targets(records: list[BenchRecord]) -> list[str]:
    """The issue's targets, met or missed, one line each."""
    lines = []
    for r in records:
        if r.speedup_vs_compiled is None or r.family.startswith("float32"):
            continue
        if r.model == "minilm":
            checks = [(r.speedup >= 3.5, f"{r.speedup:.2f}x float eager >= 3.5x"),
                      (r.speedup_vs_compiled >= 2.5,
                       f"{r.speedup_vs_compiled:.2f}x float compiled >= 2.5x"),
                      (abs(r.float_value - r.value) <= 0.01,
                       f"Pearson {r.value:.4f} within 0.01 of {r.float_value:.4f}"),
                      (r.secondary.get("cosine_mean", 0) >= 0.98,
                       f"cosine {r.secondary.get('cosine_mean', 0):.4f} >= 0.98")]
        else:
            rel = r.value / r.float_value - 1
            checks = [(rel <= 0.01, f"perplexity {rel:+.2%} within 1%"),
                      (r.speedup_vs_compiled > 1.0,
                       f"{r.speedup_vs_compiled:.2f}x float compiled > 1x")]
        lines += [f"{'met ' if ok else 'MISS'} {r.model} {r.method}: {text}"
                  for ok, text in checks]
    return lines


def combine(paths: list[str], out: str) -> int:
    """Join runs made model by model into one file (the last run of each model wins)."""
    runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    models = {}
    for run in runs:
        for name in run["details"]:
            models[name] = run
    payload = dict(runs[0], seconds=sum(r["seconds"] for r in runs),
                   load={"start": max(r["load"]["start"] for r in runs),
                         "end": max(r["load"]["end"] for r in runs)},
                   targets=[t for name, run in models.items() for t in run["targets"]
                            if f" {name} " in t],
                   details={name: run["details"][name] for name, run in models.items()},
                   records=[r for name, run in models.items() for r in run["records"]
                            if r["model"] == name])
    print(f"wrote {write_json_atomic(payload, out)} from {len(runs)} runs")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(bench.MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=LATEST)
    parser.add_argument("--combine", nargs="+", metavar="RUN", help="join runs, no timing")
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one thread: steadier ratios on a shared machine
    report = machine.machine_report()
    print(machine.format_report(report), flush=True)
    start, load_start = time.perf_counter(), os.getloadavg()[0]

    def log(text: str) -> None:
        print(f"  [{time.perf_counter() - start:6.0f} s, load {os.getloadavg()[0]:.1f}] {text}",
              flush=True)

    records, details = [], {}
    for name in args.models:
        rows, details[name] = run_model(name, args.repeats, log)
        records += rows
    print(bench.format_table(records))
    lines = targets(records)
    print("\n".join(lines))
    seconds = time.perf_counter() - start
    payload = {"created": time.strftime("%Y-%m-%d"), "machine": report,
               "repeats": args.repeats, "seconds": round(seconds),
               "load": {"start": load_start, "end": os.getloadavg()[0]},
               "targets": lines, "details": details,
               "records": [dataclasses.asdict(r) for r in records]}
    out = write_json_atomic(payload, args.out)
    print(f"wrote {out} ({len(records)} records) in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
