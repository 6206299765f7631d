"""Below 8 bits: RTN, GPTQ and AWQ x bits x group size on both models, calibration, mixed plans.

    python scripts/lowbit_bench.py [--sections gpt,minilm,calibration,mixed,samples,check]

Writes src/quantbook/results/lowbit.json (merged section by section, so two processes may
run different sections at once). One torch thread. On an AVX2 core: gpt ~6 CPU minutes,
minilm ~15, calibration ~5, mixed ~3, samples and check under 1.
"""

import argparse
import contextlib
import fcntl
import json
import pathlib
import tempfile
import time
from dataclasses import replace

import torch

from quantbook import gpt
from quantbook.explore_lowbit import (
    BITS_CHOICES,
    GPT_TARGETS,
    GROUP_SIZE_CHOICES,
    METHOD_CHOICES,
    MINILM_TARGETS,
    RESULTS,
    calibration_sets,
    gpt_loss,
    method_config,
    quantize_lowbit,
)
from quantbook.methods.mixed import (
    MixedConfig,
    bit_costs,
    module_bytes,
    plan_bytes,
    plan_greedy,
    plan_knapsack,
)
from quantbook.records import write_json_atomic
from quantbook.sweep import Sweep
from quantbook.workloads import gpt_workload, minilm_workload

SECTIONS = ("gpt", "minilm", "calibration", "mixed", "samples", "check")
CHECK_TOKENS = 8192  # validation prefix the chapter re-scores live
SAMPLE_PROMPT = "The government said"
# MiniLM is 30x the GPT: GPTQ takes its Hessians from one pass of the float model instead of
# one pass per layer, and AWQ searches on 1,024 rows per Linear instead of 4,096
MINILM_OVERRIDES = {"GPTQ": {"sequential": False}, "AWQ": {"max_tokens": 1024}}


def save(section: str, payload: object) -> None:
    """Merge one section into the results file under a lock."""
    lock = pathlib.Path(tempfile.gettempdir()) / "quantbook-lowbit.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        results[section] = payload
        write_json_atomic(results, RESULTS)
    print(f"saved {section}", flush=True)


@contextlib.contextmanager
def cpu_timer(sink: dict):
    start = time.process_time()
    yield
    sink["cpu_s"] = round(time.process_time() - start, 2)


def sweep_section(workload, targets, overrides=None) -> dict:
    """Every method x bits x group size; ``overrides`` {method: {field: value}} (MiniLM's
    cheaper settings). Saved after every row, so an interrupted run keeps what it measured."""
    start_cpu = time.process_time()
    sweep = Sweep(workload, quantize_fn=quantize_lowbit)
    floating = sweep.float_record()
    rows = []
    payload = {"metric": floating.metric, "float": {"value": floating.value,
               "secondary": floating.secondary, "size_bytes": floating.size_bytes},
               "calibration": workload.describe(), "overrides": overrides or {}, "rows": rows}
    for group_size in GROUP_SIZE_CHOICES:
        for bits in BITS_CHOICES:
            for method in METHOD_CHOICES:
                config = method_config(method, bits, group_size, targets)
                config = replace(config, **(overrides or {}).get(method, {}))
                timing = {}
                with cpu_timer(timing):
                    sweep.quantize(config)
                record = sweep.record(config)
                rows.append({"method": method, "bits": bits, "group_size": group_size,
                             "label": config.label, "value": record.value,
                             "secondary": record.secondary, "size_bytes": record.size_bytes,
                             "quantized_bytes_ratio": record.quantized_bytes_ratio,
                             "quantize_cpu_s": timing["cpu_s"]})
                print(rows[-1], flush=True)
                payload["cpu_s"] = round(time.process_time() - start_cpu, 1)  # so far
                save(workload.name, payload)
    return payload


def calibration_section(workload) -> dict:
    model, evaluate = workload.model, workload.evaluate
    tokenizer = gpt.load_gpt()[1]
    block = model.config.block_size
    sets = calibration_sets(tokenizer, block, n_windows=256)
    def score(row: dict, batches: list) -> dict:
        for method in ("GPTQ", "AWQ"):
            config = method_config(method, 3, 32, GPT_TARGETS)
            row[method] = evaluate(quantize_lowbit(model, config, batches)[0])
        print(row, flush=True)
        return row

    lee = [w for batch in sets["Lee training text"] for w in batch]
    amount = [score({"windows": n, "tokens": n * block},
                    [torch.stack(lee[:n][i:i + 8]) for i in range(0, n, 8)])
              for n in (1, 4, 16, 64, 256)]
    wrong = [score({"data": label}, batches)
             for label, batches in calibration_sets(tokenizer, block, n_windows=64).items()]
    return {"bits": 3, "group_size": 32, "amount": amount, "wrong_data": wrong}


def mixed_section(workload) -> dict:
    model, evaluate = workload.model, workload.evaluate
    tokenizer = gpt.load_gpt()[1]
    block = model.config.block_size
    scan = calibration_sets(tokenizer, block, n_windows=32, seed=1)["Lee training text"]
    from quantbook.targets import resolve_targets

    names = [n for members in resolve_targets(model, GPT_TARGETS).values() for n in members]
    choices = (2, 3, 4, 8)
    timing = {}
    with cpu_timer(timing):
        costs = bit_costs(model, lambda m: gpt_loss(m, scan), names, choices)
    sizes = module_bytes(model, names, choices)
    uniform = {bits: plan_bytes([(n, bits) for n in names], sizes) for bits in (2, 3, 4)}
    plans = {}
    for key, budget in (("2.5", (uniform[2] + uniform[3]) // 2), ("3", uniform[3]),
                        ("3.5", (uniform[3] + uniform[4]) // 2), ("4", uniform[4])):
        plan = plan_knapsack(costs, sizes, budget)
        greedy = plan_greedy(costs, sizes, budget)
        entry = {"budget_bytes": budget, "plan": plan, "plan_bytes": plan_bytes(plan, sizes),
                 "greedy_plan_bytes": plan_bytes(greedy, sizes),
                 "predicted_loss_increase": sum(costs[n][b] for n, b in plan)}
        for rounding in ("rtn", "gptq"):
            config = MixedConfig(plan=plan, rounding=rounding)
            quantized, _ = quantize_lowbit(model, config, workload.calibration)
            entry[rounding] = evaluate(quantized)
        entry["greedy_rtn"] = evaluate(quantize_lowbit(model, MixedConfig(plan=greedy))[0])
        plans[key] = entry
        print(key, {k: v for k, v in entry.items() if k != "plan"}, flush=True)
    return {"choices": list(choices), "names": names, "costs": costs, "sizes": sizes,
            "uniform_bytes": uniform, "plans": plans, "scan_cpu_s": timing["cpu_s"],
            "scan_windows": 32}


def samples_section(workload) -> dict:
    tokenizer = gpt.load_gpt()[1]
    out = {"prompt": SAMPLE_PROMPT, "max_new_tokens": 240, "seed": 0, "texts": {}}
    models = {"float32": workload.model}
    for method, bits in (("RTN", 4), ("GPTQ", 4), ("RTN", 3), ("GPTQ", 3)):
        config = method_config(method, bits, 32, GPT_TARGETS)
        models[config.label] = quantize_lowbit(workload.model, config, workload.calibration)[0]
    for label, model in models.items():
        out["texts"][label] = gpt.sample(model, tokenizer, SAMPLE_PROMPT, 240, seed=0)
    return out


def check_section(workload) -> dict:
    """Perplexity on the validation prefix, for the rows the chapter recomputes live."""
    from quantbook import data

    tokenizer = gpt.load_gpt()[1]
    block = workload.model.config.block_size
    val_ids = torch.tensor(tokenizer.encode(data.lee_split().validation))[: CHECK_TOKENS + 1]
    out = {"tokens": CHECK_TOKENS, "perplexity": {}}
    models = {"float32": workload.model}
    for method in METHOD_CHOICES:
        config = method_config(method, 3, 32, GPT_TARGETS)
        models[config.label] = quantize_lowbit(workload.model, config, workload.calibration)[0]
    for label, model in models.items():
        out["perplexity"][label] = gpt.perplexity(model, val_ids, block)["perplexity"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(1)
    workload = gpt_workload() if set(sections) - {"minilm"} else None
    for section in sections:
        start = time.perf_counter(), time.process_time()
        if section == "gpt":
            payload = sweep_section(workload, GPT_TARGETS)
        elif section == "minilm":
            payload = sweep_section(minilm_workload(), MINILM_TARGETS, MINILM_OVERRIDES)
        else:
            payload = globals()[f"{section}_section"](workload)
        payload["wall_s"] = round(time.perf_counter() - start[0], 1)
        payload["cpu_s"] = round(time.process_time() - start[1], 1)
        save(section, payload)


if __name__ == "__main__":
    main()
