"""Choosing a method from one bench run: quality loss, Pareto fronts and a budgeted pick.

The records are those of :func:`quantbook.bench.run_bench` (``make bench``): one per model and
method, with ``size_ratio``, ``speedup``, ``metric``, ``value`` and ``float_value``. Quality is
compared across metrics as a relative *loss* in percent, positive when the quantized model is
worse: perplexity that rises, or a Lee correlation that falls.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt

from quantbook.widgets import figure_png, linked_views

LOWER_IS_BETTER = {"perplexity": True, "lee_pearson": False}
COSTS = {"size": ("size_ratio", "size (fraction of float32)"),
         "speed": ("speedup", "speed-up over float32 (x)")}
FAMILIES = ("float32", "weight-only (quantbook)", "weight-only (torchao)", "dynamic (eager)",
            "dynamic (torchao)", "static (eager)")
_COLORS = dict(zip(FAMILIES, ("black", "tab:blue", "tab:cyan", "tab:orange", "tab:red",
                              "tab:green"), strict=True))
BUDGETS_PCT = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0)
RESOLUTION_PCT = 0.01  # quality losses closer than this count as equal on a Pareto front
MODEL_TITLES = {"gpt": "GPT (perplexity)", "minilm": "MiniLM (Lee Pearson)"}


def quality_loss_pct(record: dict) -> float:
    """Relative quality loss of ``record`` against its float32 model, in percent (worse > 0)."""
    metric = record["metric"]
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"metric={metric!r} is unknown: use one of {list(LOWER_IS_BETTER)} "
                         "or add it to quantbook.choose.LOWER_IS_BETTER")
    value, reference = record["value"], record["float_value"]
    change = (value - reference) / abs(reference)
    return 100 * (change if LOWER_IS_BETTER[metric] else -change) + 0.0  # no "-0.00 %"


def family(method: str) -> str:
    """The method family a bench method name belongs to (one of :data:`FAMILIES`)."""
    if method == "float32":
        return "float32"
    api = "torchao" if method.startswith("torchao") else None
    for kind in ("weight-only", "dynamic", "static"):
        if kind in method:
            default = "quantbook" if kind == "weight-only" else "eager"
            return f"{kind} ({api or default})"
    raise ValueError(f"method={method!r} belongs to no family: names contain 'weight-only', "
                     "'dynamic' or 'static'")


def _check_cost(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is unknown: use one of {list(COSTS)}")
    return COSTS[cost][0]


def _better_cost(key: str, a: float, b: float) -> bool:
    """Is cost value ``a`` at least as good as ``b``? Smaller size, larger speed-up."""
    return a <= b if key == "size_ratio" else a >= b


def model_records(records: Iterable[dict], model: str) -> list[dict]:
    """The records of one model; raises when there are none."""
    chosen = [r for r in records if r["model"] == model]
    if not chosen:
        models = sorted({r["model"] for r in records})
        raise ValueError(f"model={model!r} has no records: choose from {models}")
    return chosen


def pareto_front(records: Sequence[dict], cost: str,
                 resolution_pct: float = RESOLUTION_PCT) -> list[dict]:
    """The records no other record dominates on (quality loss, cost), sorted by cost.

    A record is dominated when another is at least as good on both and strictly better on one.

    Args:
        records: the records of one model.
        cost: ``"size"`` (smaller ``size_ratio`` is better) or ``"speed"`` (larger ``speedup``).
        resolution_pct: losses are rounded to this step before comparing, so that a difference
            in the fifth digit of a perplexity does not put a larger model on the front
            (``0`` compares exact values).
    """
    key = _check_cost(cost)
    if not resolution_pct >= 0:
        raise ValueError(f"resolution_pct={resolution_pct} must be >= 0 (0 compares exactly)")

    def rounded(loss: float) -> float:
        return round(loss / resolution_pct) * resolution_pct if resolution_pct else loss

    points = [(rounded(quality_loss_pct(r)), r[key], r) for r in records]
    front = []
    for loss, c, record in points:
        dominated = any(
            other_loss <= loss and _better_cost(key, other_c, c)
            and (other_loss < loss or other_c != c)
            for other_loss, other_c, _ in points)
        if not dominated:
            front.append(record)
    return sorted(front, key=lambda r: r[key], reverse=key == "speedup")


def pick(records: Sequence[dict], max_loss_pct: float, cost: str) -> dict:
    """The best record on ``cost`` among those that lose at most ``max_loss_pct`` % of quality.

    float32 loses nothing, so there is always an answer; ties go to the smaller loss.
    """
    key = _check_cost(cost)
    if not max_loss_pct >= 0:
        raise ValueError(f"max_loss_pct={max_loss_pct} must be >= 0 (percent of quality lost)")
    allowed = [r for r in records if quality_loss_pct(r) <= max_loss_pct]
    if not allowed:
        raise ValueError("no record is within the budget: records must include the float32 row")
    sign = 1 if key == "size_ratio" else -1
    return min(allowed, key=lambda r: (sign * r[key], quality_loss_pct(r)))


def plot_pareto(records: Sequence[dict], cost: str, ax: plt.Axes, *,
                max_loss_pct: float | None = None, title: str = "") -> plt.Axes:
    """Quality loss against cost for one model's records; the Pareto front drawn as a line.

    The front's points are numbered and named in the legend. With ``max_loss_pct``, records
    over that budget are drawn faint and the pick within it is ringed. Negative losses (better
    than float32) are drawn below zero on the symmetric-log axis.
    """
    key, label = _check_cost(cost), COSTS[cost][1]
    for r in records:
        loss = quality_loss_pct(r)
        faint = max_loss_pct is not None and loss > max_loss_pct
        ax.scatter(r[key], loss, color=_COLORS[family(r["method"])],
                   marker="*" if r["method"] == "float32" else "o", s=70 if faint else 45,
                   alpha=0.25 if faint else 0.95, zorder=5 if r["method"] == "float32" else 3)
    front = pareto_front(records, cost)
    ax.plot([r[key] for r in front], [quality_loss_pct(r) for r in front],
            color="0.5", lw=1, ls="--", zorder=2)
    # number the front's points; the legend names them (labels beside close points overlap)
    for i, r in enumerate(front, 1):
        ax.annotate(str(i), (r[key], quality_loss_pct(r)), fontsize=8, fontweight="bold",
                    xytext=(4, 4), textcoords="offset points")
    names = [plt.Line2D([], [], ls="", label=f"{i}  {r['method']}") for i, r in enumerate(front, 1)]
    ax.legend(handles=names, loc="best", fontsize=7, handlelength=0, handletextpad=0,
              title="Pareto front", title_fontsize=7, framealpha=0.85)
    if max_loss_pct is not None:
        best = pick(records, max_loss_pct, cost)
        ax.scatter(best[key], quality_loss_pct(best), s=260, facecolors="none",
                   edgecolors="crimson", lw=2, zorder=4)
        ax.axhline(max_loss_pct, color="crimson", lw=0.8, ls=":")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel(label)
    ax.set_ylabel("quality loss vs float32 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def legend_handles() -> list:
    """One marker per family, for a figure legend."""
    return [plt.Line2D([], [], marker="*" if f == "float32" else "o", ls="", color=_COLORS[f],
                       label=f) for f in FAMILIES]


def budget_figure(records: Sequence[dict], max_loss_pct: float | None = None,
                  models: Sequence[str] = ("gpt", "minilm")) -> plt.Figure:
    """Both Pareto charts (size, speed) for each model, optionally with a quality budget."""
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)),
                             layout="constrained", squeeze=False)
    for row, model in zip(axes, models, strict=True):
        chosen = model_records(records, model)
        for ax, cost in zip(row, COSTS, strict=True):
            plot_pareto(chosen, cost, ax, max_loss_pct=max_loss_pct,
                        title=f"{MODEL_TITLES.get(model, model)}: {cost}")
    fig.legend(handles=legend_handles(), loc="outside lower center", ncols=len(FAMILIES),
               fontsize=8)
    if max_loss_pct is not None:
        fig.suptitle(f"Quality budget {max_loss_pct:g} %: the ringed method is the best inside it")
    return fig


def picks_html(records: Sequence[dict], max_loss_pct: float,
               models: Sequence[str] = ("gpt", "minilm")) -> str:
    """A small HTML table: per model, the smallest and the fastest method within the budget."""
    rows = []
    for model in models:
        chosen = model_records(records, model)
        small, fast = pick(chosen, max_loss_pct, "size"), pick(chosen, max_loss_pct, "speed")
        rows.append(
            f"<tr><td>{model}</td><td>{small['method']} ({small['size_ratio']:.1%}, loss "
            f"{quality_loss_pct(small):.2f} %)</td><td>{fast['method']} ({fast['speedup']:.2f}x, "
            f"loss {quality_loss_pct(fast):.2f} %)</td></tr>")
    head = "<tr><th>model</th><th>smallest within budget</th><th>fastest within budget</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def explorer(records: Sequence[dict], budgets: Sequence[float] = BUDGETS_PCT,
             start_pct: float | None = None) -> widgets.VBox:
    """Live explorer: a quality-budget slider redraws the charts and the picks. Needs a kernel.

    ``start_pct`` is the budget shown first (one of ``budgets``; the middle one by default).
    """
    budgets = list(budgets)
    start = budgets[len(budgets) // 2] if start_pct is None else start_pct
    if start not in budgets:
        raise ValueError(f"start_pct={start_pct} is not one of budgets={budgets}: pick one of them")
    budget = widgets.SelectionSlider(options=[(f"{b:g} %", b) for b in budgets], value=start,
                                     description="quality budget",
                                     style={"description_width": "initial"},
                                     layout=widgets.Layout(width="420px"))
    image = widgets.Image(format="png", layout=widgets.Layout(width="820px"))
    table = widgets.HTML()

    def update(_change=None) -> None:
        table.value = picks_html(records, budget.value)
        image.value = figure_png(budget_figure(records, budget.value))

    budget.observe(update, names="value")
    update()
    return widgets.VBox([budget, table, image])


def static_explorer(records: Sequence[dict],
                    budgets: Sequence[float] = BUDGETS_PCT) -> widgets.VBox:
    """Kernel-free explorer: one precomputed view per budget, switched by a slider."""
    views = [widgets.VBox([
        widgets.HTML(picks_html(records, b)),
        widgets.Image(value=figure_png(budget_figure(records, b), dpi=80), format="png",
                      layout=widgets.Layout(width="820px"))]) for b in budgets]
    return linked_views([f"{b:g} %" for b in budgets], views, "quality budget")
