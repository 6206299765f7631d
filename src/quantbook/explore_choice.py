"""The decision guide's (chapter 09) figures and explorers: size and speed against quality loss.

The decisions themselves (loss, fronts, the budgeted pick) are in :mod:`quantbook.choose`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt

from quantbook.choose import (
    BUDGETS_PCT,
    COSTS,
    MIN_COSINE,
    model_records,
    pareto_front,
    pick,
    quality_loss_pct,
)
from quantbook.kit import FIGURE_WIDTH_IN
from quantbook.records import FLOAT_FAMILY, BenchRecord
from quantbook.widgets import control_layout, figure_png, linked_views, png_view, show_png

MODEL_TITLES = {"gpt": "GPT (perplexity)", "minilm": "MiniLM (Lee Pearson)"}
COMPILED_FLOAT = f"{FLOAT_FAMILY} (compiled)"
# one colour per method family of make bench (every chapter's); others get one of _EXTRA_COLORS
FAMILY_COLORS = {FLOAT_FAMILY: "black", COMPILED_FLOAT: "0.55",
                 "weight-only (quantbook)": "tab:blue", "weight-only (torchao)": "tab:cyan",
                 "dynamic (eager)": "tab:orange", "dynamic (torchao)": "tab:red",
                 "static (eager)": "tab:green", "static (torchao)": "tab:olive",
                 "static (PT2E)": "tab:purple", "static (float outputs)": "yellowgreen",
                 "SmoothQuant (static, float outputs)": "tab:pink",
                 "LLM.int8() decomposition (static)": "tab:brown",
                 "per-embedding-group (static)": "goldenrod", "GPTQ (quantbook)": "navy",
                 "AWQ (quantbook)": "teal", "mixed bit widths (quantbook)": "tab:gray"}
_EXTRA_COLORS = ("lightcoral", "darkkhaki", "plum", "sienna")
COMPILED_MARKER = "D"  # a model run through torch.compile (its record has compile_s)


def family_color(family: str) -> str:
    """The colour of a method family in every chart of the chapter."""
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    return _EXTRA_COLORS[sum(map(ord, family)) % len(_EXTRA_COLORS)]


def _marker(record: BenchRecord) -> str:
    """A star for float32 (compiled or not), a diamond for a compiled method, else a dot."""
    if record.family in (FLOAT_FAMILY, COMPILED_FLOAT):
        return "*"
    return COMPILED_MARKER if record.compile_s is not None else "o"


def plot_pareto(records: Sequence[BenchRecord], cost: str, ax: plt.Axes, *,
                max_loss_pct: float | None = None, min_cosine: float | None = MIN_COSINE,
                title: str = "") -> plt.Axes:
    """Quality loss against cost for one model's records; the Pareto front drawn as a line.

    The front's points are numbered and named in the legend. With ``max_loss_pct``, records
    over that budget are drawn faint and the pick within it is ringed (among the records whose
    embedding cosine to float32, where measured, is at least ``min_cosine``). Negative losses
    (better than float32) are drawn below zero on the symmetric-log axis.
    """
    front = pareto_front(records, cost)  # also rejects an unknown cost
    key, label = COSTS[cost]
    for r in records:
        loss = quality_loss_pct(r)
        if getattr(r, key) is None or math.isinf(loss):
            continue  # not timed, or a model that produced NaN: nothing to place
        faint = max_loss_pct is not None and loss > max_loss_pct
        marker = _marker(r)
        ax.scatter(getattr(r, key), loss, color=family_color(r.family), marker=marker,
                   s=70 if faint else 45, alpha=0.25 if faint else 0.95,
                   zorder=5 if marker == "*" else 3)
    ax.plot([getattr(r, key) for r in front], [quality_loss_pct(r) for r in front],
            color="0.5", lw=1, ls="--", zorder=2)
    # number the front's points; the legend names them (labels beside close points overlap)
    for i, r in enumerate(front, 1):
        ax.annotate(str(i), (getattr(r, key), quality_loss_pct(r)),
                    fontweight="bold", xytext=(4, 4), textcoords="offset points")
    names = [plt.Line2D([], [], ls="", label=f"{i}  {r.method}") for i, r in enumerate(front, 1)]
    # under the axes, where it covers no point (inside, "best" still hid some)
    ax.legend(handles=names, loc="upper left", bbox_to_anchor=(0.0, -0.17), ncols=2,
              handlelength=0, handletextpad=0, title="Pareto front", alignment="left",
              frameon=False)
    if max_loss_pct is not None:
        best = pick(records, max_loss_pct, cost, min_cosine=min_cosine)
        ax.scatter(getattr(best, key), quality_loss_pct(best), s=260, facecolors="none",
                   edgecolors="crimson", lw=2, zorder=4)
        ax.axhline(max_loss_pct, color="crimson", lw=0.8, ls=":")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel(label)
    ax.set_ylabel("quality loss vs float32 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def legend_handles(families: Sequence[str], compiled: bool = False) -> list:
    """One marker per family, for a figure legend; with ``compiled``, one more saying what
    the diamond marks."""
    handles = [plt.Line2D([], [], marker="*" if f in (FLOAT_FAMILY, COMPILED_FLOAT) else "o",
                          ls="", color=family_color(f), label=f) for f in families]
    if compiled:
        handles.append(plt.Line2D([], [], marker=COMPILED_MARKER, ls="", color="0.3",
                                  label="diamond: a method run through torch.compile"))
    return handles


def budget_figure(records: Sequence[BenchRecord], max_loss_pct: float | None = None,
                  models: Sequence[str] = ("gpt", "minilm"),
                  min_cosine: float | None = MIN_COSINE,
                  costs: Sequence[str] = tuple(COSTS)) -> plt.Figure:
    """The Pareto charts of each model and cost, stacked one under the other (model by model,
    size before speed), optionally with a quality budget; the families' legend is at the foot.

    Pass one model and one cost (``models=("gpt",), costs=("size",)``) for a single chart.
    """
    panels = [(model, cost) for model in models for cost in costs]
    if not panels:
        raise ValueError(f"models={list(models)!r}, costs={list(costs)!r} leave no chart: "
                         f"pass at least one model and one of {list(COSTS)}")
    fig, axes = plt.subplots(len(panels), 1, figsize=(FIGURE_WIDTH_IN, 4.0 * len(panels) + 1.0),
                             layout="constrained", squeeze=False)
    for ax, (model, cost) in zip(axes[:, 0], panels, strict=True):
        plot_pareto(model_records(records, model), cost, ax, max_loss_pct=max_loss_pct,
                    min_cosine=min_cosine, title=f"{MODEL_TITLES.get(model, model)}: {cost}")
    shown = [r for r in records if r.model in models]
    families = list(dict.fromkeys(r.family for r in shown))
    compiled = any(_marker(r) == COMPILED_MARKER for r in shown)
    fig.legend(handles=legend_handles(families, compiled), loc="outside lower center",
               ncols=min(len(families) + compiled, 2))
    if max_loss_pct is not None:
        fig.suptitle(f"Quality budget {max_loss_pct:g} %: the ringed method is the best inside it")
    return fig


def budget_alt(records: Sequence[BenchRecord], max_loss_pct: float,
               models: Sequence[str] = ("gpt", "minilm"),
               min_cosine: float | None = MIN_COSINE,
               costs: Sequence[str] = tuple(COSTS)) -> str:
    """Alt text of a :func:`budget_figure` with a budget: what it plots and what it rings."""
    def best(model: str, cost: str) -> str:
        return pick(model_records(records, model), max_loss_pct, cost, min_cosine=min_cosine).method

    picks = "; ".join(f"{model} by {cost}: {best(model, cost)}" for model in models
                      for cost in costs)
    charts = ", ".join(f"{model} against {COSTS[cost][1]}" for model in models for cost in costs)
    return (f"Scatter charts of quality loss against cost, one per model and cost ({charts}), "
            f"with each Pareto front as a dashed line and methods over the {max_loss_pct:g} % "
            f"budget faded. Ringed as the best inside the budget: {picks}.")


def picks_html(records: Sequence[BenchRecord], max_loss_pct: float,
               models: Sequence[str] = ("gpt", "minilm"),
               min_cosine: float | None = MIN_COSINE) -> str:
    """A small HTML table: per model, the smallest and the fastest method within the budget
    (and, where an embedding cosine is measured, at least ``min_cosine`` of it)."""
    rows = []
    for model in models:
        chosen = model_records(records, model)
        small, fast = (pick(chosen, max_loss_pct, cost, min_cosine=min_cosine)
                       for cost in ("size", "speed"))
        rows.append(
            f"<tr><td>{model}</td><td>{small.method} ({small.size_ratio:.1%}, loss "
            f"{quality_loss_pct(small):.2f} %)</td><td>{fast.method} ({fast.speedup:.2f}x, "
            f"loss {quality_loss_pct(fast):.2f} %)</td></tr>")
    head = "<tr><th>model</th><th>smallest within budget</th><th>fastest within budget</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _budget_view(records: Sequence[BenchRecord], max_loss_pct: float,
                 costs: Sequence[str]) -> tuple[bytes, str]:
    """PNG bytes and alt text of the explorers' figure at one budget."""
    png = figure_png(budget_figure(records, max_loss_pct, costs=costs))
    return png, budget_alt(records, max_loss_pct, costs=costs)


def explorer(records: Sequence[BenchRecord], budgets: Sequence[float] = BUDGETS_PCT,
             start_pct: float | None = None, costs: Sequence[str] = tuple(COSTS)
             ) -> widgets.VBox:
    """Live explorer: a quality-budget slider redraws the charts and the picks. Needs a kernel.

    ``start_pct`` is the budget shown first (one of ``budgets``; the middle one by default);
    ``costs`` the charts drawn per model (both by default, see :func:`budget_figure`).
    """
    budgets = list(budgets)
    start = budgets[len(budgets) // 2] if start_pct is None else start_pct
    if start not in budgets:
        raise ValueError(f"start_pct={start_pct} is not one of budgets={budgets}: pick one of them")
    budget = widgets.SelectionSlider(options=[(f"{b:g} %", b) for b in budgets], value=start,
                                     description="quality budget",
                                     style={"description_width": "initial"},
                                     layout=control_layout())
    table = widgets.HTML()
    image = png_view(*_budget_view(records, start, costs))

    def update(_change=None) -> None:
        table.value = picks_html(records, budget.value)
        show_png(image, *_budget_view(records, budget.value, costs))

    budget.observe(update, names="value")
    table.value = picks_html(records, start)
    return widgets.VBox([budget, table, image])


def static_explorer(records: Sequence[BenchRecord], budgets: Sequence[float] = BUDGETS_PCT,
                    start_pct: float | None = None, costs: Sequence[str] = tuple(COSTS)
                    ) -> widgets.VBox:
    """Kernel-free explorer: one precomputed view per budget, switched by a slider.

    ``start_pct`` is the budget shown first (one of ``budgets``; the first by default).
    """
    budgets = list(budgets)
    start = budgets[0] if start_pct is None else start_pct
    if start not in budgets:
        raise ValueError(f"start_pct={start_pct} is not one of budgets={budgets}: pick one of them")
    views = [widgets.VBox([widgets.HTML(picks_html(records, b)),
                           png_view(*_budget_view(records, b, costs))]) for b in budgets]
    return linked_views([f"{b:g} %" for b in budgets], views, "quality budget",
                        start=budgets.index(start))
