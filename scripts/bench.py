"""Run every quantization method on both models in one process; print the table, write JSON.

Usage: python scripts/bench.py [--models gpt minilm] [--only LABEL [LABEL ...]]
[--no-compiled] [--repeats 10] [--out FILE] (default FILE: _build/bench/results.json).
Chapter 09 renders the committed run in src/quantbook/results/bench.json; `make bench-commit`
copies this file there, a separate step.

The table's `ch` column names the chapter that teaches each row (notebooks/NN_*.ipynb).
Chapter 06's compiled rows need a C++ compiler: without one the script stops before running
anything and says so (`--no-compiled` runs the rest). `--only` runs a few rows (their
labels: `--only help`).

Time on a 2-core AVX2 CPU (the committed run, 2026-12-03): 23 min for all 57 rows: the GPT
5 min (2 of them its compiled rows), MiniLM's 25 eager rows 15 min (6 of them GPTQ and AWQ,
which calibrate for over a minute each; 2 torchao's uncompiled int8, slow without VNNI), its
compiled rows 3 min. Each row's
timing ends after the round that passes ``--max-s`` seconds (at least 3 rounds), and MiniLM is
timed on one batch of 16 articles; before both, the run took about an hour.
"""

import argparse
import sys
import time

import torch

from quantbook import bench, machine
from quantbook.methods import inductor
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
COMPILED = bench.COMPILED_CHAPTERS[0][:2]  # the chapter number row_chapters gives its rows


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
    for r in records:  # chapter 06's targets (they were set on an AVX-512 VNNI CPU)
        if r.compile_s is None or r.family.startswith("float32") or r.speedup is None:
            continue
        if r.model == "minilm":
            drop, cosine = r.float_value - r.value, r.secondary.get("cosine_mean", 0.0)
            met = (r.speedup >= 3.5 and r.speedup_vs_compiled >= 2.5 and abs(drop) <= 0.01
                   and cosine >= 0.98)
            lines.append(f"{'met ' if met else 'MISS'} minilm {r.method}: {r.speedup:.2f}x "
                         f"float eager >= 3.5, {r.speedup_vs_compiled:.2f}x float compiled >= "
                         f"2.5, Pearson drop {drop:+.4f} within 0.01, cosine {cosine:.4f} >= "
                         "0.98")
        elif r.model == "gpt":
            rel = r.value / r.float_value - 1
            met = rel <= 0.01 and r.speedup_vs_compiled > 1
            lines.append(f"{'met ' if met else 'MISS'} gpt {r.method}: perplexity {rel:+.2%} "
                         f"within 1%, {r.speedup_vs_compiled:.2f}x float compiled > 1")
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


def compile_cache() -> dict[str, int]:
    """Inductor's compiled-graph cache hits and misses in this process so far."""
    from torch._dynamo.utils import counters

    return {key: int(counters["inductor"][key])
            for key in ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass")}


def choose_rows(parser: argparse.ArgumentParser, args) -> tuple[dict, bool]:
    """run_bench's selection (``only=`` labels, or the chapters) and whether it holds compiled
    rows, checked before any model loads."""
    for model in args.models:
        unknown = [label for label in args.only or () if label not in bench.row_chapters(model)]
        if unknown:
            parser.error(f"--only {unknown} names no row of {model}: `--only help` lists the "
                         "rows of the models you pass (--models gpt minilm by default)")
    if args.only is not None:
        chapters = bench.row_chapters(args.models)
        compiled = [label for label in args.only if chapters[label] == COMPILED]
        return {"only": args.only}, bool(compiled)
    skip = bench.COMPILED_CHAPTERS if args.no_compiled else ()
    return {"chapters": [c for c in bench.CHAPTERS if c not in skip]}, not args.no_compiled


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(bench.MODELS),
                        choices=bench.MODELS)
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--only", nargs="+", metavar="LABEL",
                      help="run these rows only (quote labels with spaces); `help` lists them")
    rows.add_argument("--no-compiled", action="store_true",
                      help="leave out chapter 06's compiled rows (no C++ compiler needed)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds per row, each alternating float32 and the method")
    parser.add_argument("--max-s", type=float, default=bench.MAX_TIMING_S,
                        help="end a row's timing after the round that passes this many "
                             "seconds, 3 rounds in (default %(default)s; 0: every round)")
    parser.add_argument("--out", default=str(bench.LATEST))
    args = parser.parse_args(argv)
    chapters = bench.row_chapters(args.models)
    if args.only == ["help"]:
        print("\n".join(f"{chapter:2}  {label}" for label, chapter in chapters.items()
                        if not label.startswith("float32")))
        return 0
    selection, compiled = choose_rows(parser, args)
    if compiled:
        try:
            inductor.check_cpp_compiler()
        except RuntimeError as error:
            print(f"{error}\nChapter 06's compiled rows need it: add --no-compiled to run "
                  "the others.", file=sys.stderr)
            return 2
    silence_known_noise()
    torch.manual_seed(0)
    report = machine.machine_report()
    print(machine.format_report(report), flush=True)
    start = time.perf_counter()
    max_s = args.max_s or None
    records = bench.run_bench(args.models, repeats=args.repeats, max_s=max_s, **selection,
                              progress=lambda name: print(
                                  f"  ... {time.perf_counter() - start:5.0f} s  {name}",
                                  flush=True))
    print(bench.format_table(records, chapters))
    print("\n".join(check_targets(records)))
    seconds = time.perf_counter() - start
    cache = compile_cache()
    if any(cache.values()):
        print(f"inductor's graph cache: {cache['fxgraph_cache_hit']} hits, "
              f"{cache['fxgraph_cache_miss']} misses, {cache['fxgraph_cache_bypass']} "
              "bypassed (freezing bypasses it; compile seconds also depend on the kernels "
              "compiled by earlier runs, kept under /tmp/torchinductor_$USER)")
    out = save_records(records, args.out, machine=report, repeats=args.repeats,
                       seconds=round(seconds), max_timing_s=max_s,
                       timed_articles=bench.TIMED_ARTICLES, compile_cache=cache)
    print(f"wrote {out} ({len(records)} records) in {seconds:.0f} s ({seconds / 60:.1f} min); "
          "`make bench-commit` "
          "makes it the run chapter 09 renders")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
