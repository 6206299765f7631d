"""Measure the MiniLM qualities that chapters 04 and 05 quote and store them as JSON.

torchao's int8 models run ``torch._int_mm``, a plain loop on CPUs without VNNI: one evaluation
on the 50 Lee articles takes minutes there, so the chapters load these results and re-check
each model on two articles (``quantbook.stored_quality.check``). Each model is built exactly as
its chapter builds it: torchao's dynamic int8 (chapter 04), torchao's static int8 calibrated
on 8 batches of 4 training articles of 128 tokens (chapter 05), and the 12 eager static models
of chapter 05's calibration grid (3 observers, after 1 and 8 of those batches, two sets of
Linears), which take 80 s to evaluate there and a few seconds to check.

Usage: python scripts/stored_quality.py [--out FILE]
(default src/quantbook/results/stored_quality.json; `make stored-quality`, about 6 CPU-minutes).
"""

import argparse
import time

from quantbook.quiet import silence_known_noise

silence_known_noise()

from quantbook import explore_calibration as ec  # noqa: E402
from quantbook import machine, stored_quality  # noqa: E402
from quantbook.data import minilm_calibration_batches  # noqa: E402
from quantbook.evaluate import evaluate_minilm  # noqa: E402
from quantbook.methods import TorchaoDynamicConfig, TorchaoStaticConfig, quantize  # noqa: E402
from quantbook.minilm import load_minilm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(stored_quality.RESULTS))
    args = parser.parse_args()
    start = time.perf_counter()
    model, tokenizer = load_minilm()
    reference = evaluate_minilm(model, tokenizer)["embeddings"]  # (50, 384), float32
    batches = minilm_calibration_batches(tokenizer, n_batches=8, batch_size=4, max_length=128)
    builds = {"torchao int8 dynamic": (TorchaoDynamicConfig(), None),  # chapter 04
              "torchao int8 static": (TorchaoStaticConfig(), batches)}  # chapter 05
    qualities = []
    for label, (config, calibration) in builds.items():
        quantized, _ = quantize(model, config, calibration)
        qualities.append(stored_quality.measure_quality(quantized, tokenizer, reference, label))
    # chapter 05's grid, observed and converted as ec.quality_grid does
    sets = ec.linear_sets(model)
    snapshots = ec.observe_linears(model, sets["attention + FFN"], batches, checkpoints=(1, 8))
    for (observer, n), observed in snapshots.items():
        for set_label in ("attention", "attention + FFN"):
            config = ec.StaticConfig(observer=observer, modules=tuple(sets[set_label]))
            quantized, _ = ec.convert_observed(model, observed, config)
            qualities.append(stored_quality.measure_quality(
                quantized, tokenizer, reference, ec.grid_label(observer, n, set_label)))
    stored_quality.save(args.out, qualities, machine=machine.machine_report(),
                        seconds=round(time.perf_counter() - start))


if __name__ == "__main__":
    main()
