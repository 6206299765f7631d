"""Helpers of the "Below 8 bits" chapter and of ``scripts/lowbit_bench.py``.

The sweep of RTN, GPTQ and AWQ over bits and group sizes runs in the script (minutes); the
chapter loads its artifact (:func:`load_results`), draws it, and recomputes a few rows with
the same functions to check that the artifact still matches the code.
"""

from __future__ import annotations

import inspect
import json
import pathlib
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantbook import affine
from quantbook.kit import FIGURE_WIDTH_IN, SMALLEST_FONT_PT
from quantbook.methods.awq import AWQConfig, quantize_awq
from quantbook.methods.base import MethodConfig, QuantReport
from quantbook.methods.gptq import GPTQConfig, quantize_gptq
from quantbook.methods.mixed import MixedConfig, quantize_mixed
from quantbook.methods.weight_only import WeightOnlyConfig
from quantbook.sweep import Workload
from quantbook.widgets import control_layout, image_view, linked_views

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "lowbit.json"
QAT_CHECKPOINT = (pathlib.Path(__file__).resolve().parent / "checkpoints"
                  / "gpt_qat_int2_g32.safetensors")
GPT_TARGETS = ("attention", "ffn", "head")
MINILM_TARGETS = ("attention", "ffn")
METHOD_CHOICES = ("RTN", "GPTQ", "AWQ")
BITS_CHOICES = (2, 3, 4)
GROUP_SIZE_CHOICES = (32, 128)


def method_config(method: str, bits: int, group_size: int | None,
                  targets: tuple[str, ...]) -> MethodConfig:
    """The config of one sweep cell: ``method`` in ``METHOD_CHOICES``.

    GPTQ runs with ``act_order`` (columns by decreasing Hessian diagonal, scales fixed up
    front), AWQ with its clipping search: the variants that did best in the sweep.
    """
    if method == "RTN":
        return WeightOnlyConfig(bits=bits, granularity="group" if group_size else "channel",
                                group_size=group_size, targets=targets)
    if method == "GPTQ":
        return GPTQConfig(bits=bits, group_size=group_size, act_order=True, targets=targets)
    if method == "AWQ":
        return AWQConfig(bits=bits, group_size=group_size, targets=targets)
    raise ValueError(f"method={method!r} is unknown: choose one of {', '.join(METHOD_CHOICES)}")


def quantize_lowbit(model: nn.Module, config: MethodConfig, batches: Sequence | None = None
                    ) -> tuple[nn.Module, QuantReport]:
    """``Sweep``'s quantize function for this chapter's configs (and every other one)."""
    if isinstance(config, GPTQConfig):
        return quantize_gptq(model, config, batches)
    if isinstance(config, AWQConfig):
        return quantize_awq(model, config, batches)
    if isinstance(config, MixedConfig):
        return quantize_mixed(model, config, batches)
    from quantbook.methods import quantize

    return quantize(model, config, batches)


@torch.no_grad()
def gpt_loss(model: nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Mean next-token cross-entropy (nats) of the GPT over token windows (B, T)."""
    total, count = 0.0, 0
    for x in batches:
        logits, _ = model(x[:, :-1])  # (B, T - 1, vocab)
        total += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(),
                                       reduction="sum"))
        count += x[:, 1:].numel()
    return total / count


def windows(ids: torch.Tensor, n_windows: int, block_size: int, seed: int = 0,
            batch_size: int = 8) -> list[torch.Tensor]:
    """``n_windows`` random windows of ``ids`` (distinct starts), in batches of ``batch_size``."""
    starts = np.random.default_rng(seed).choice(ids.numel() - block_size + 1, size=n_windows,
                                                replace=False)
    stacked = torch.stack([ids[s: s + block_size] for s in starts.tolist()])  # (N, T)
    return list(stacked.split(batch_size))


def calibration_sets(tokenizer, block_size: int, n_windows: int = 64, seed: int = 0
                     ) -> dict[str, list[torch.Tensor]]:
    """Calibration windows from the right text and from three wrong ones, same tokenizer."""
    from quantbook import data, gpt

    reviews = (data.lee_dir() / "pang_lee_polarity.cor").read_text(encoding="latin-1")
    reviews = "\n".join(line.split(" ", 1)[1] for line in reviews.splitlines() if " " in line)
    source = inspect.getsource(gpt)
    random_ids = torch.randint(1, tokenizer.vocab_size, (n_windows * block_size * 2,),
                               generator=torch.Generator().manual_seed(seed))
    texts = {"Lee training text": data.lee_split().train, "movie reviews": reviews,
             "Python source": source}
    sets = {label: windows(torch.tensor(tokenizer.encode(text)), n_windows, block_size, seed)
            for label, text in texts.items()}
    sets["random tokens"] = windows(random_ids, n_windows, block_size, seed)
    return sets


def load_results(path: str | pathlib.Path = RESULTS) -> dict:
    """The artifact of ``scripts/lowbit_bench.py`` (``make lowbit``)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: run `make lowbit` to write them")
    return json.loads(path.read_text())


def increase(value: float, base: float) -> float:
    """Relative increase in percent, e.g. perplexity 4.95 over 4.50: 10.0."""
    return 100.0 * (value / base - 1.0)


def sweep_rows(results: dict, model: str = "gpt") -> list[dict]:
    """One row per (method, bits, group size) of the sweep, with the increase over float."""
    block = results[model]
    rows = []
    for row in block["rows"]:
        rows.append({**row, "increase_pct": increase(row["value"], block["float"]["value"])
                     if model == "gpt" else None})
    return rows


def bench_configs(workload: Workload) -> dict[str, MethodConfig]:
    """The rows this chapter adds to ``make bench``, label -> config, on ``workload``'s Linear
    groups: GPTQ and AWQ at int4 and int3 group 32, and on the GPT (``workload.name ==
    "gpt"``) the mixed plan at int3's bytes (read from the committed results)."""
    if not isinstance(workload, Workload):
        raise TypeError(f"workload is a {type(workload).__name__}: expected a Workload, "
                        "e.g. quantbook.bench.workload(\"gpt\")")
    targets = tuple(workload.linear_targets)
    configs = {}
    for method in ("GPTQ", "AWQ"):
        for bits in (4, 3):
            config = method_config(method, bits, 32, targets)
            configs[config.label] = config
    results = load_results() if RESULTS.is_file() else {}
    if workload.name == "gpt" and "mixed" in results:
        plan = tuple((n, b) for n, b in results["mixed"]["plans"]["3"]["plan"])
        config = MixedConfig(plan=plan, group_size=32)
        configs[config.label + " (int3 bytes)"] = config
    return configs

# ----------------------------------------------------------------------------- figures
METHOD_COLORS = {"RTN": "tab:blue", "GPTQ": "tab:orange", "AWQ": "tab:green", "QAT": "tab:red"}


def sweep_figure(results: dict) -> plt.Figure:
    """GPT perplexity increase against model bytes, one line per method (all bits, groups)."""
    block = results["gpt"]
    base = block["float"]["value"]
    fig, ax = plt.subplots()
    for method in METHOD_CHOICES:
        rows = sorted((r for r in block["rows"] if r["method"] == method),
                      key=lambda r: r["size_bytes"])
        ax.plot([r["size_bytes"] / 1e3 for r in rows],
                [increase(r["value"], base) for r in rows], "o-", label=method,
                color=METHOD_COLORS[method])
    for r in block["rows"]:
        if r["method"] == "RTN":
            ax.annotate(f"int{r['bits']} g{r['group_size']}", (r["size_bytes"] / 1e3,
                        increase(r["value"], base)), textcoords="offset points", xytext=(4, 4),
                        fontsize=SMALLEST_FONT_PT)
    ax.set(yscale="log", xlabel="model size (kB, serialized)",
           ylabel="perplexity increase over float32 (%)",
           title="GPTQ lowers RTN's perplexity increase at every size")
    ax.legend(loc="upper right")
    return fig


def _bits_values(results: dict, bits: int) -> dict[tuple[str, int], float]:
    """(method, group size) -> GPT perplexity increase (%) at ``bits``."""
    block = results["gpt"]
    base = block["float"]["value"]
    return {(r["method"], r["group_size"]): increase(r["value"], base) for r in block["rows"]
            if r["bits"] == bits}


def bits_figure(results: dict, bits: int) -> plt.Figure:
    """Perplexity increase of each method at ``bits``, group sizes side by side (one view);
    the legend stands beside the bars, off them."""
    values = _bits_values(results, bits)
    fig, ax = plt.subplots(figsize=(6.0, 3.5))
    width = 0.25
    for i, method in enumerate(METHOD_CHOICES):
        xs = [j + (i - 1) * width for j in range(len(GROUP_SIZE_CHOICES))]
        ax.bar(xs, [values[method, g] for g in GROUP_SIZE_CHOICES], width, label=method,
               color=METHOD_COLORS[method])
    ax.set_xticks(range(len(GROUP_SIZE_CHOICES)), [f"group {g}" for g in GROUP_SIZE_CHOICES])
    ax.set(ylabel="perplexity increase (%)", title=f"GPT at {bits} bits: RTN, GPTQ and AWQ")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def bits_alt(results: dict, bits: int) -> str:
    """Alt text of :func:`bits_figure`: every bar's value."""
    values = _bits_values(results, bits)
    groups = "; ".join(f"group {g}: " + ", ".join(f"{m} {values[m, g]:.1f} %"
                                                  for m in METHOD_CHOICES)
                       for g in GROUP_SIZE_CHOICES)
    return (f"Bar chart of the GPT's perplexity increase over float32 at {bits} bits for RTN, "
            f"GPTQ and AWQ, groups of 32 and of 128 side by side. {groups}.")


def calibration_figure(results: dict) -> plt.Figure:
    """Perplexity at 3 bits group 32 against the calibration tokens GPTQ and AWQ saw."""
    block = results["calibration"]
    base = results["gpt"]["float"]["value"]
    rtn = next(r["value"] for r in results["gpt"]["rows"]
               if (r["method"], r["bits"], r["group_size"]) == ("RTN", 3, 32))
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN - 1.2, 4.0))  # and the legend beside it
    tokens = [row["tokens"] for row in block["amount"]]
    for method in ("GPTQ", "AWQ"):
        ax.plot(tokens, [increase(row[method], base) for row in block["amount"]], "o-",
                label=method, color=METHOD_COLORS[method])
    ax.axhline(increase(rtn, base), color=METHOD_COLORS["RTN"], ls="--", label="RTN (no data)")
    ax.set(xscale="log", ylim=(0, None), xlabel="calibration tokens (windows of 128)",
           ylabel="perplexity increase (%)", title="One window of text already gets most of "
           "GPTQ's gain")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # off the lines
    return fig


def plan_figure(results: dict, key: str = "3") -> plt.Figure:
    """Bits the knapsack gives each Linear at the bytes of uniform ``key`` bits."""
    plan = results["mixed"]["plans"][key]["plan"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [n.replace("blocks.", "b").replace(".attn.", ".").replace(".mlp.", ".")
             for n, _ in plan]
    bits = [b for _, b in plan]
    ax.bar(range(len(plan)), bits, color=[plt.cm.viridis(b / 8) for b in bits])
    ax.set_xticks(range(len(plan)), names, rotation=90)
    ax.set(ylabel="bits", yticks=(2, 3, 4, 8),
           title=f"Same bytes as int{key}: block 0 and lm_head get the extra bits")
    return fig


def qat_figure(metrics: dict) -> plt.Figure:
    """Perplexity (validation prefix) of the QAT model along training; step 0 is RTN."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [0, *metrics["eval_step"]]
    ax.plot(steps, [metrics["ppl_rtn_8k"], *metrics["eval_ppl_8k"]], "o-",
            color=METHOD_COLORS["QAT"])
    ax.set(xlabel="QAT step (16 windows of 128 tokens each)",
           ylabel="perplexity (first 8,192 tokens)",
           title="Training through the rounding closes most of int2's gap")
    return fig


def static_explorer(results: dict, start_bits: int = 3) -> widgets.VBox:
    """Kernel-free explorer: one precomputed chart per bit width, bits ascending (2, 3, 4);
    it starts at ``start_bits``."""
    if start_bits not in BITS_CHOICES:
        raise ValueError(f"start_bits={start_bits!r} is not one of {BITS_CHOICES}: start at a "
                         "bit width the slider offers")
    views = [image_view(bits_figure(results, bits), bits_alt(results, bits))
             for bits in BITS_CHOICES]
    return linked_views([f"{b} bits" for b in BITS_CHOICES], views, "weight bits",
                        start=BITS_CHOICES.index(start_bits))


# ----------------------------------------------------------------------------- one layer, live
def layer_inputs(model: nn.Module, name: str, batches: Sequence) -> torch.Tensor:
    """The rows ``(tokens, cols)`` that the Linear ``name`` sees on ``batches``."""
    from quantbook.methods.gptq import InputHooks

    rows: list[torch.Tensor] = []
    InputHooks(model, [name], lambda _, x: rows.append(x)).run(model, batches)
    return torch.cat(rows)


def layer_errors(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int) -> dict:
    """Relative output error ``|X (W - Q)^T|^2 / |X W^T|^2`` of RTN, GPTQ and AWQ on one layer."""
    from quantbook.methods.awq import _group_qparams, search_clip, search_scale
    from quantbook.methods.gptq import gptq_quantize_weight

    spec = affine.QuantSpec(bits=bits, scheme="symmetric", granularity="group",
                            group_size=group_size)
    reference = float((X @ W.T).pow(2).sum())
    rtn = affine.fake_quantize(W, affine.choose_qparams(W, spec))
    codes, qparams, _ = gptq_quantize_weight(W, 2 * X.T @ X / X.shape[0], spec, act_order=True)
    s, _, _ = search_scale(X, [W], spec)
    awq_qparams = _group_qparams(W * s, spec, search_clip(X / s, W * s, spec))
    weights = {"RTN": rtn, "GPTQ": affine.dequantize(codes, qparams),
               "AWQ": affine.fake_quantize(W * s, awq_qparams) / s}
    return {m: float((X @ (W - q).T).pow(2).sum()) / reference for m, q in weights.items()}


def live_explorer(model: nn.Module, batches: Sequence, start_layer: str = "blocks.1.mlp.fc_in",
                  start_bits: int = 3, start_group_size: int = 32) -> widgets.VBox:
    """Live explorer (needs a kernel): pick a Linear, bits (a slider from 2 up to 8) and group
    size; see each method's output error on the calibration inputs of that layer. It starts at
    ``start_layer``, ``start_bits`` and ``start_group_size`` (one of ``GROUP_SIZE_CHOICES``)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    layer = widgets.Dropdown(options=names, value=start_layer, description="layer",
                             layout=control_layout())
    bits = widgets.IntSlider(value=start_bits, min=2, max=8, description="bits",
                             layout=control_layout())
    group = widgets.Dropdown(options=GROUP_SIZE_CHOICES, value=start_group_size,
                             description="group size")
    out = widgets.HTML()
    cache: dict[str, torch.Tensor] = {}

    def update(_change=None) -> None:
        if layer.value not in cache:
            cache[layer.value] = layer_inputs(model, layer.value, batches)
        W = model.get_submodule(layer.value).weight.detach()
        errors = layer_errors(W, cache[layer.value], bits.value, group.value)
        out.value = "<br>".join(f"{m}: relative output error {e:.2e}" for m, e in errors.items())

    for control in (layer, bits, group):
        control.observe(update, names="value")
    update()
    return widgets.VBox([layer, bits, group, out])
