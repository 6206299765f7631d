"""Run every quantization method on both models in one process; print the table, write JSON.

Usage: python scripts/bench.py [--models gpt minilm] [--repeats 10] [--out FILE]
(default FILE: _build/bench/results.json). Chapter 09 renders the committed run in
src/quantbook/results/bench.json; `make bench-commit` copies this file there, a separate step.
"""

import argparse
import sys
import time

import torch

from quantbook import bench, machine
from quantbook.quiet import silence_known_noise
from quantbook.records import save_records

# measured against the targets on a 2-core AVX-512 VNNI machine
TARGETS = (
    ("minilm", "dynamic int8 per-tensor", "speedup", ">=", 2.5),
    ("minilm", "weight-only int8, with embeddings", "size_ratio", "<=", 0.27),
    ("minilm", "dynamic int8, embeddings 8-bit", "size_ratio", "<=", 0.27),
    ("gpt", "weight-only int4", "quantized_bytes_ratio", "<=", 0.16),
    ("minilm", "weight-only int4", "quantized_bytes_ratio", "<=", 0.16),
)


def check_targets(records: list) -> list[str]:
    """One line per target: the measured value and whether it is met."""
    rows = {r.key: r for r in records}
    lines = []
    for model, method, key, op, bound in TARGETS:
        if (model, method) not in rows:
            continue
        value = getattr(rows[model, method], key)
        met = value >= bound if op == ">=" else value <= bound
        verdict = "met " if met else "MISS"
        lines.append(f"{verdict} {model} {method}: {key} {value:.3f} {op} {bound}")
    for r in records:
        if r.key == ("minilm", "dynamic int8 per-tensor"):
            drop = r.float_value - r.value
            lines.append(f"{'met ' if abs(drop) <= 0.01 else 'MISS'} minilm dynamic int8: "
                         f"Lee Pearson within 0.01 of float32 (drop {drop:+.4f})")
        if r.key == ("gpt", "weight-only int8"):
            rel = r.value / r.float_value - 1
            lines.append(f"{'met ' if rel <= 0.01 else 'MISS'} gpt int8 weights: perplexity "
                         f"within 1% of float32 ({rel:+.2%})")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(bench.MODELS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(bench.LATEST))
    args = parser.parse_args(argv)
    silence_known_noise()
    torch.manual_seed(0)
    report = machine.machine_report()
    print(machine.format_report(report), flush=True)
    start = time.perf_counter()
    records = bench.run_bench(args.models, repeats=args.repeats,
                              progress=lambda name: print(f"  ... {name}", flush=True))
    print(bench.format_table(records))
    print("\n".join(check_targets(records)))
    seconds = time.perf_counter() - start
    out = save_records(records, args.out, machine=report, repeats=args.repeats,
                       seconds=round(seconds))
    print(f"wrote {out} ({len(records)} records) in {seconds:.0f} s; `make bench-commit` "
          "makes it the run chapter 09 renders")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
