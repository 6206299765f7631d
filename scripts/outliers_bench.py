"""Precompute the activation-outliers chapter's slow results and write them as JSON.

On MiniLM (the chapter's calibration: 2 batches of 4 training articles, 128 tokens): eager
static int8 with requantized outputs (all 36 Linears, and with the six FFN output Linears kept
float as in chapter 05), the SmoothQuant alpha sweep, percentile-clipped input
ranges, and what min-max, percentile and MSE ranges keep of the [CLS] spike in layer 0's FFN
output. On the GPT (its bench workload):
perplexity of eager static int8, float-output static int8, SmoothQuant and the decomposition.
The chapter loads the file and re-checks one row live.

Usage: python scripts/outliers_bench.py [--out FILE]
(default src/quantbook/results/outliers.json; `make outliers`, about 5 CPU-minutes).
"""

import argparse
import time

import torch

from quantbook.quiet import silence_known_noise

silence_known_noise()

from quantbook import bench, machine  # noqa: E402
from quantbook import explore_outliers as eo  # noqa: E402
from quantbook.explore_static import capture  # noqa: E402
from quantbook.methods import StaticConfig  # noqa: E402
from quantbook.methods.base import select  # noqa: E402
from quantbook.methods.decomposed import DecompositionConfig  # noqa: E402
from quantbook.methods.float_output import (  # noqa: E402
    FloatOutputConfig,
    StaticInt8Linear,
    build,
    input_qparams,
)
from quantbook.methods.smoothquant import SmoothQuantConfig  # noqa: E402
from quantbook.methods.static import forward_batch  # noqa: E402
from quantbook.ranges import mse_range, percentile_range  # noqa: E402
from quantbook.sweep import Sweep  # noqa: E402

SPIKE = "encoder.layer.0.output.dense"  # the FFN output with the [CLS] spike in channel 99


def captured(workload, names):
    """Inputs and outputs of the named Linears over the workload's calibration batches."""
    with capture(workload.model, names) as seen, torch.no_grad():
        for batch in workload.calibration:
            forward_batch(workload.model, batch)
    return seen


def clipped(sweep, percentile):
    """Float-output static int8 with each input range clipped at a percentile."""
    model, config = sweep.workload.model, FloatOutputConfig()
    selection = select(model, config)
    seen = captured(sweep.workload, selection.chosen)

    def make(name, linear):
        x = torch.cat([t.flatten() for t in seen[name]["input"]])
        low, high = percentile_range(x, percentile=percentile)
        return StaticInt8Linear(linear, *input_qparams(low, high))

    model, report = build(model, config, selection, {}, make)
    return sweep.measure(f"static int8, float outputs, p{percentile:g} input ranges", model,
                         report)


def spike_ranges(workload):
    """High end of min-max, percentile and MSE ranges of the spiking FFN output (7 bits)."""
    out = torch.cat([t.flatten() for t in captured(workload, [SPIKE])[SPIKE]["output"]])
    ranges = {"min-max": float(out.max()),
              "p99.99": float(percentile_range(out, percentile=99.99)[1]),
              "p99.9": float(percentile_range(out, percentile=99.9)[1]),
              "mse": float(mse_range(out, None, 7, "asymmetric", n_grid=100)[1])}
    return {"module": SPIKE, "high": ranges}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(eo.RESULTS))
    args = parser.parse_args()
    torch.manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    workload, _ = eo.minilm_outlier_workload()
    sweep = Sweep(workload, quantize_fn=eo.quantize_remedy)
    ffn_out = tuple(f"encoder.layer.{i}.output.dense" for i in range(6))
    configs = {"static int8 (min-max)": StaticConfig(observer="minmax"),  # chapter 05's model
               "static int8 (min-max), FFN outputs float": StaticConfig(  # chapter 05's fix
                   observer="minmax", exclude=ffn_out),
               "static int8, float outputs": FloatOutputConfig()}
    configs |= {f"SmoothQuant a={a:g}, static int8": SmoothQuantConfig(alpha=a)
                for a in eo.ALPHAS}
    records = sweep.run(configs, progress=lambda label: print("minilm:", label, flush=True))
    records += [clipped(sweep, p) for p in (99.9, 99.99)]
    spike = spike_ranges(workload)
    gpt = bench.workload("gpt")
    linears = gpt.linear_targets
    gpt_configs = {"static int8 (min-max)": StaticConfig(targets=linears, observer="minmax"),
                   **eo.bench_configs(gpt),
                   "SmoothQuant a=0.5, static int8": SmoothQuantConfig(targets=linears,
                                                                       alpha=0.5),
                   "LLM.int8() decomposition, static int8": DecompositionConfig(
                       targets=linears)}
    records += Sweep(gpt, quantize_fn=eo.quantize_remedy).run(
        gpt_configs, progress=lambda label: print("gpt:", label, flush=True))
    eo.save_results(args.out, records, machine=machine.machine_report(), spike=spike,
                    seconds=round(time.perf_counter() - start, 1),
                    cpu_seconds=round(time.process_time() - cpu, 1))
    for r in records:
        print(f"{r.model:7} {r.method:55} {r.value:.4f} {r.secondary}")


if __name__ == "__main__":
    main()
