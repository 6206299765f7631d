"""Chapter 01 helpers: where a transformer's parameters and multiply-accumulates live.

Everything here reads or draws the ledger of :func:`quantbook.accounting.group_accounting`:

- :func:`linear_share` and :func:`matmul_crossover`: the share of the work in ``nn.Linear``
  layers, and the sequence length at which the attention matmuls catch up with them;
- :func:`plot_cost_shares`: one 100 % stacked bar per model and quantity (parameters, MACs per
  token), one colour per group, so models of very different sizes compare at a glance;
- :func:`mac_share_sweep` and :func:`plot_matmul_share_sweep`: how the share of the attention
  matmuls (activation times activation, no weights) grows with the sequence length T;
- :func:`mac_share_explorer` (live, needs a kernel) and :func:`static_mac_share_explorer`
  (precomputed images switched in the browser) to pick a sequence length and see the split.

Figures are sized for the book's column (7 inches wide, see :mod:`quantbook.kit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from torch import nn

from quantbook.accounting import ATTENTION_MATMULS, OTHER, ROWS, GroupCost, group_accounting
from quantbook.kit import FIGURE_WIDTH_IN
from quantbook.targets import GROUP_TYPES
from quantbook.widgets import (
    control_layout,
    figure_png,
    image_view,
    linked_views,
    png_view,
    row_layout,
    show_png,
)

# the groups made of nn.Linear layers: attention, ffn, head
LINEAR_GROUPS = tuple(group for group, kind in GROUP_TYPES.items() if kind is nn.Linear)
GROUP_COLORS = {  # one colour per accounting row (tab10 shades)
    "embeddings": "#7f7f7f",
    "attention": "#1f77b4",
    ATTENTION_MATMULS: "#aec7e8",
    "ffn": "#ff7f0e",
    "head": "#2ca02c",
    OTHER: "#d9d9d9",
}
QUANTITIES = {"params": ("param_share", "parameters"), "macs": ("mac_share", "MACs / token")}
_MIN_LABELLED_SHARE = 0.06  # segments narrower than this get no percentage label


def linear_share(costs: Sequence[GroupCost]) -> dict[str, float]:
    """Share of the parameters and of the MACs per token that sit in ``nn.Linear`` layers.

    Args:
        costs: the rows of :func:`quantbook.accounting.group_accounting` for one model.

    Returns:
        ``{"params": float, "macs": float}``, each in [0, 1]: the sum over the ``attention``,
        ``ffn`` and ``head`` rows. Example: a ledger with embeddings 40 % of the parameters and
        the Linear groups 60 % gives ``params == 0.6``.
    """
    rows = _check_costs("costs", costs)
    linear = [c for c in rows if c.group in LINEAR_GROUPS]
    return {"params": sum(c.param_share for c in linear), "macs": sum(c.mac_share for c in linear)}


def matmul_crossover(model: nn.Module) -> float:
    """Sequence length at which the attention matmuls cost as many MACs as all Linear layers.

    Linear MACs per token do not depend on T; the attention matmuls grow linearly with T, so the
    crossover is ``linear_macs / matmul_macs_at_T1``. Example: one GPT layer of width d with a
    head of ``d * vocab`` MACs crosses at ``(12 d^2 + d * vocab) / (2 d) = 6 d + vocab / 2``.
    """
    costs = {c.group: c.macs_per_token for c in group_accounting(model, 1)}
    matmul = costs[ATTENTION_MATMULS]
    if matmul == 0:
        raise ValueError("model has no attention layer: its attention matmuls never cost anything")
    return sum(costs[g] for g in LINEAR_GROUPS) / matmul


def mac_share_sweep(model: nn.Module, seq_lens: Sequence[int]) -> dict[str, np.ndarray]:
    """MAC share of every accounting row across sequence lengths.

    Returns:
        row name (each of :data:`quantbook.accounting.ROWS`) -> array of shares, one per seq_len.
    """
    seq_lens = _check_seq_lens(seq_lens)
    ledgers = [group_accounting(model, t) for t in seq_lens]
    return {row: np.array([ledger[k].mac_share for ledger in ledgers]) for k, row in
            enumerate(ROWS)}


def plot_cost_shares(
    costs_by_model: Mapping[str, Sequence[GroupCost]],
    quantities: Sequence[str] = ("params", "macs"),
    title: str | None = None,
    figsize: tuple[float, float] = (FIGURE_WIDTH_IN, 3.8),
) -> plt.Figure:
    """Draw one 100 % stacked horizontal bar per model and quantity, coloured by group.

    Args:
        costs_by_model: model name -> its :func:`~quantbook.accounting.group_accounting` rows.
        quantities: which bars per model, from ``"params"`` and ``"macs"`` (MACs per token).
        title: the figure's title; by default it states the MAC share of the Linear layers.
        figsize: figure size in inches.

    Returns:
        The figure (not shown; end the cell with ``plt.show()``).
    """
    if not isinstance(costs_by_model, Mapping) or not costs_by_model:
        raise ValueError("costs_by_model is empty: pass {model name: group_accounting(...)}")
    ledgers = {name: _check_costs(f"costs_by_model[{name!r}]", c)
               for name, c in costs_by_model.items()}
    quantities = list(quantities)
    unknown = [q for q in quantities if q not in QUANTITIES]
    if not quantities or unknown:
        raise ValueError(f"quantities={quantities!r} is not supported: choose one or both of "
                         f"{', '.join(map(repr, QUANTITIES))}")
    bars = [(f"{name}: {QUANTITIES[q][1]}", q, rows) for name, rows in ledgers.items()
            for q in quantities]
    fig, ax = plt.subplots(figsize=figsize)
    y = np.arange(len(bars))[::-1]  # first bar at the top
    for row in ROWS:
        widths, lefts = [], []
        for _, q, rows in bars:
            shares = [getattr(c, QUANTITIES[q][0]) for c in rows]
            k = ROWS.index(row)
            widths.append(100 * shares[k])
            lefts.append(100 * sum(shares[:k]))
        ax.barh(y, widths, left=lefts, color=GROUP_COLORS[row], label=row, edgecolor="white")
        for yi, left, width in zip(y, lefts, widths, strict=True):
            if width >= 100 * _MIN_LABELLED_SHARE:
                ax.text(left + width / 2, yi, f"{width:.0f}%", ha="center", va="center")
    ax.set_yticks(y, [label for label, _, _ in bars])
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the model's total (%)")
    if title is None:
        shares = [f"{name} {100 * linear_share(rows)['macs']:.0f}%"
                  for name, rows in ledgers.items()]
        title = "Share of the MACs in Linear layers: " + ", ".join(shares)
    ax.set_title(title)
    # below the bars, in three columns: beside them it would squeeze the bars in the column
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def plot_matmul_share_sweep(
    models: Mapping[str, nn.Module],
    seq_lens: Sequence[int],
    context_lens: Mapping[str, int] | None = None,
    title: str = "Attention matmuls grow with T; below 50% the Linear layers dominate",
    figsize: tuple[float, float] = (FIGURE_WIDTH_IN, 4.0),
) -> plt.Figure:
    """Plot the MAC share of the attention matmuls against the sequence length, one line a model.

    Args:
        models: model name -> float model (quantbook's GPT or MiniLM).
        seq_lens: sequence lengths T to evaluate (the x axis is logarithmic).
        context_lens: model name -> longest sequence it accepts; lengths beyond it are drawn
            dashed, as what the formula predicts for a model with a longer context.
        title: the figure's title.
        figsize: figure size in inches.
    """
    seq_lens = _check_seq_lens(seq_lens)
    context_lens = dict(context_lens or {})
    fig, ax = plt.subplots(figsize=figsize)
    t = np.array(seq_lens)
    for k, (name, model) in enumerate(models.items()):
        share = 100 * mac_share_sweep(model, seq_lens)[ATTENTION_MATMULS]
        color = f"C{k}"
        inside = t <= context_lens.get(name, t.max())
        ax.plot(t[inside], share[inside], "o-", color=color, label=name)
        if not inside.all():  # continue dashed from the last point inside the context
            start = max(int(inside.sum()) - 1, 0)
            ax.plot(t[start:], share[start:], "o--", color=color, mfc="white",
                    markevery=slice(1, None),  # the first point is inside, drawn solid
                    label=f"{name}, beyond its context of {context_lens[name]}")
    ax.axhline(50, color="black", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(t, [str(v) for v in seq_lens])
    ax.set_ylim(0, 100)
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel("attention matmuls (% of MACs)")
    ax.set_title(title)
    ax.legend(loc="upper left")  # the shares rise with T: the upper left stays empty
    fig.tight_layout()
    return fig


def mac_share_explorer(models: Mapping[str, nn.Module], seq_lens: Sequence[int],
                       seq_len: int | None = None, model: str | None = None) -> widgets.VBox:
    """Live explorer: pick a model and a sequence length, see the MAC split by group.

    The ledgers of every (model, T) pair are computed up front and each figure is cached after
    its first drawing, so a change answers in well under a second. Needs a running kernel.

    Args:
        models: model name -> float model; with several, an ``"all"`` choice shows them all.
        seq_lens: the slider's sequence lengths, increasing.
        seq_len: the length it starts at (one of ``seq_lens``; by default the first).
        model: the model it starts at (a name of ``models``, or ``"all"`` with several; by
            default ``"all"``, or the only model).

    Returns:
        A ``VBox`` of a model ``Dropdown``, a ``SelectionSlider`` over ``seq_lens`` and an
        ``Image`` showing :func:`plot_cost_shares` of the MACs (attributes ``model_picker``,
        ``seq_len_slider`` and ``image`` give access to them).
    """
    seq_lens = _check_seq_lens(seq_lens)
    start = _check_start(seq_len, seq_lens)
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models is empty: pass {model name: model}")
    ledgers = {(name, t): group_accounting(model, t) for name, model in models.items()
               for t in seq_lens}
    choices = [*models, "all"] if len(models) > 1 else list(models)
    if model is not None and model not in choices:
        raise ValueError(f"model={model!r} is not one of the choices {choices}: start at one "
                         "of them")
    cache: dict[tuple[str, int], tuple[bytes, str]] = {}

    def view(choice: str, t: int) -> tuple[bytes, str]:
        if (choice, t) not in cache:
            names = list(models) if choice == "all" else [choice]
            ledger = {n: ledgers[n, t] for n in names}
            cache[choice, t] = (figure_png(_mac_figure(ledger, t)), _mac_alt(ledger, t))
        return cache[choice, t]

    picker = widgets.Dropdown(options=choices, value=model or choices[-1], description="model",
                              layout=widgets.Layout(width="auto"))
    slider = widgets.SelectionSlider(options=seq_lens, value=seq_lens[start],
                                     description="sequence length T",
                                     style={"description_width": "initial"},
                                     layout=control_layout())
    image = png_view(*view(picker.value, slider.value))

    def update(_change=None) -> None:
        show_png(image, *view(picker.value, slider.value))

    picker.observe(update, names="value")
    slider.observe(update, names="value")
    box = widgets.VBox([widgets.HBox([picker, slider], layout=row_layout()), image])
    box.model_picker, box.seq_len_slider, box.image = picker, slider, image
    return box


def static_mac_share_explorer(
    models: Mapping[str, nn.Module], seq_lens: Sequence[int], seq_len: int | None = None
) -> widgets.VBox:
    """Kernel-free explorer: one precomputed image per sequence length, all models in each.

    Built on :func:`quantbook.widgets.linked_views`, so the slider keeps working on the static
    site. It starts at ``seq_len`` (one of ``seq_lens``; by default the first). Returns its
    ``VBox`` (slider, ``Stack`` of images).
    """
    seq_lens = _check_seq_lens(seq_lens)
    start = _check_start(seq_len, seq_lens)
    views = []
    for t in seq_lens:
        ledger = {n: group_accounting(m, t) for n, m in models.items()}
        views.append(image_view(_mac_figure(ledger, t), _mac_alt(ledger, t)))
    return linked_views([f"T = {t}" for t in seq_lens], views, "sequence length", start)


def _mac_figure(costs_by_model: Mapping[str, Sequence[GroupCost]], seq_len: int) -> plt.Figure:
    height = 2.3 + 0.45 * len(costs_by_model)  # title, axis and legend, then one bar a model
    shares = ", ".join(f"{name} {100 * linear_share(rows)['macs']:.0f}%"
                       for name, rows in costs_by_model.items())
    return plot_cost_shares(costs_by_model, ("macs",), figsize=(FIGURE_WIDTH_IN, height),
                            title=f"T = {seq_len}: share of the MACs in Linear layers: {shares}")


def _mac_alt(costs_by_model: Mapping[str, Sequence[GroupCost]], seq_len: int) -> str:
    """Alt text of :func:`_mac_figure`: each model's MAC shares by group, largest first."""
    models = "; ".join(
        f"{name}: " + ", ".join(f"{c.group} {100 * c.mac_share:.0f}%"
                                for c in sorted(rows, key=lambda c: -c.mac_share)
                                if c.mac_share >= 0.005)
        for name, rows in costs_by_model.items())
    return (f"Stacked bars, one per model, of the share of the multiply-accumulates per token "
            f"that each group of layers does at sequence length T = {seq_len}. {models}.")


def _check_costs(name: str, costs: Sequence[GroupCost]) -> list[GroupCost]:
    rows = list(costs)
    if [getattr(c, "group", None) for c in rows] != list(ROWS):
        raise ValueError(f"{name} is not a ledger of group_accounting(): expected one GroupCost "
                         f"per row of {ROWS}, in that order")
    return rows


def _check_start(seq_len: int | None, seq_lens: list[int]) -> int:
    """Index in ``seq_lens`` of the length an explorer starts at (the first when ``None``)."""
    if seq_len is None:
        return 0
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len not in seq_lens:
        raise ValueError(f"seq_len={seq_len!r} is not one of seq_lens={seq_lens}: "
                         "start at a length the slider offers")
    return seq_lens.index(seq_len)


def _check_seq_lens(seq_lens: Sequence[int]) -> list[int]:
    values = list(seq_lens)
    if not values or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in values):
        raise ValueError(f"seq_lens={values!r} is not supported: pass a non-empty list of "
                         "integers >= 1, e.g. [32, 128, 512]")
    if values != sorted(set(values)):
        raise ValueError(f"seq_lens={values!r} must be strictly increasing, e.g. [32, 128, 512]")
    return values
