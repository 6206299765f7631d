"""Chapter 05's calibration grid: observers x calibration sizes x Linear sets, calibrated once.

* :func:`observe_linears` runs calibration *once* for several observers: forward hooks on the
  float model feed every observer the tensors it would see in a prepared model, and copies are
  kept after chosen batch counts.
* :func:`convert_observed` turns one copy into the same int8 model that
  ``prepare_static -> calibrate -> convert_static`` gives (the tests check this).
* :func:`quality_grid` converts every copy for every Linear set and measures each model with
  the book's one sweep engine, :meth:`quantbook.sweep.Sweep.measure`; given the figures that
  ``make stored-quality`` measured for the same models on all 50 Lee articles, it checks each
  model on two articles (:func:`quantbook.stored_quality.check`) and quotes them instead.

:mod:`quantbook.explore_static_figures` draws the grid and explores it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from quantbook import stored_quality
from quantbook.explore_static import float_linear, make_observer
from quantbook.methods.base import QuantReport, select
from quantbook.methods.static import (
    OBSERVERS,
    StaticConfig,
    convert_static,
    forward_batch,
    prepare_static,
)
from quantbook.quiet import quiet_torch_ao
from quantbook.records import BenchRecord
from quantbook.stored_quality import StoredQuality
from quantbook.sweep import Sweep
from quantbook.targets import list_targets
from quantbook.validate import check_batches


def linear_sets(model: nn.Module) -> dict[str, list[str]]:
    """The sets of Linears the chapter compares: attention only, all, all but the FFN output.

    Returns:
        label -> module names: ``{"attention": [...], "attention + FFN": [...],
        "attention + FFN input": [...]}``; the last keeps each FFN's output projection
        (``output.dense``, ``fc_out``) in float.
    """
    groups = list_targets(model)
    ffn_out = [n for n in groups["ffn"] if n.endswith((".output.dense", ".fc_out"))]
    return {"attention": groups["attention"],
            "attention + FFN": groups["attention"] + groups["ffn"],
            "attention + FFN input": groups["attention"]
            + [n for n in groups["ffn"] if n not in ffn_out]}


def observe_linears(model: nn.Module, names: Sequence[str], batches: Sequence,
                    observers: Sequence[str] = OBSERVERS, checkpoints: Sequence[int] = (1, 4, 8),
                    run_fn: Callable[[nn.Module, object], None] = forward_batch,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Calibrate every observer kind in one pass, keeping copies after ``checkpoints`` batches.

    A prepared Linear's input observer sees the Linear's input and its output observer the
    output, both float (observers watch, they do not quantize). So hooks on the float model
    feed the same tensors to one pair of observers per Linear and kind.

    Returns:
        ``{(observer, n_batches): {name: (input_observer, output_observer)}}``.
    """
    batches = check_batches(model, batches)
    checkpoints = sorted(set(checkpoints))
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > len(batches):
        raise ValueError(f"checkpoints={checkpoints} must lie in 1..{len(batches)} (the number "
                         "of batches): pass fewer checkpoints or more batches")
    live = {kind: {n: (make_observer(kind), make_observer(kind)) for n in names}
            for kind in observers}

    def hook(name):
        def feed(_module, args, output):
            for kind in live:
                live[kind][name][0](args[0].detach())
                live[kind][name][1](output.detach())
        return feed

    handles = [float_linear(model, n).register_forward_hook(hook(n)) for n in names]
    snapshots = {}
    try:
        with torch.no_grad(), quiet_torch_ao():
            for done, batch in enumerate(batches[: checkpoints[-1]], start=1):
                run_fn(model, batch)
                if done in checkpoints:
                    snapshots.update({(kind, done): copy.deepcopy(live[kind]) for kind in live})
                if progress is not None:
                    progress(done, checkpoints[-1])
    finally:
        for handle in handles:
            handle.remove()
    return snapshots


def convert_observed(model: nn.Module, observed: Mapping[str, tuple], config: StaticConfig
                     ) -> tuple[nn.Module, QuantReport]:
    """``prepare_static(model, config)``, load the given observers, ``convert_static``.

    Args:
        observed: ``{name: (input_observer, output_observer)}``, one snapshot of
            :func:`observe_linears`; it must hold every Linear that ``config`` selects.
        config: the recipe; select the Linears with ``modules=`` (or ``targets``, ``exclude``).
    """
    prepared = prepare_static(model, config)
    kind = type(make_observer(config.observer))
    for name in select(model, config).chosen:
        if name not in observed:
            raise ValueError(f"no observers for {name!r}: observe_linears(...) must watch every "
                             "module the config selects")
        if type(observed[name][0]) is not kind:
            raise ValueError(f"observers for {name!r} are {type(observed[name][0]).__name__}, "
                             f"but config.observer={config.observer!r} needs {kind.__name__}")
        wrapper = prepared.get_submodule(name)
        wrapper.quant.activation_post_process = copy.deepcopy(observed[name][0])
        wrapper.module.activation_post_process = copy.deepcopy(observed[name][1])
    return convert_static(prepared)


@dataclass(frozen=True)
class GridPoint:
    """One static int8 model of the calibration grid: where it sits, and its record.

    Attributes:
        observer: the activation observer, e.g. ``"histogram"``.
        n_batches: how many calibration batches the observers saw.
        linear_set: the label of the quantized Linears, a key of :func:`linear_sets`.
        record: what :meth:`quantbook.sweep.Sweep.measure` measured.
    """

    observer: str
    n_batches: int
    linear_set: str
    record: BenchRecord

    @property
    def value(self) -> float:
        """The workload's quality metric (MiniLM: Lee Pearson)."""
        return self.record.value

    @property
    def cosine_mean(self) -> float:
        """Mean cosine between this model's embeddings and the float ones."""
        return self.record.quality("cosine_mean")


def grid_label(observer: str, n_batches: int, linear_set: str) -> str:
    """The label of one grid model, e.g. ``static int8 (histogram, 8 batches, attention)``."""
    batches = f"{n_batches} batch{'es' if n_batches != 1 else ''}"
    return f"static int8 ({observer}, {batches}, {linear_set})"


def quality_grid(sweep: Sweep, snapshots: Mapping, sets: Mapping[str, Sequence[str]],
                 keep: Sequence[tuple] = (), stored: Mapping[str, StoredQuality] | None = None,
                 tokenizer=None) -> tuple[list[GridPoint], dict[tuple, nn.Module]]:
    """Convert every (observer, batches) snapshot for every Linear set and measure it.

    Args:
        sweep: the sweep over the float model the snapshots watched; each model is measured
            with ``sweep.measure`` (its workload's ``evaluate`` must give ``cosine_mean``).
        snapshots: the output of :func:`observe_linears`.
        sets: label -> Linear names, e.g. from :func:`linear_sets`.
        keep: ``(observer, n_batches, set label)`` keys whose models to return too.
        stored: optional stored qualities by method label (``stored_quality.load()``): a model
            whose :func:`grid_label` is there is checked against it on two articles (a
            ValueError if it computes something else) and its stored quality is used instead
            of evaluating it; the others are evaluated. Size is measured either way.
        tokenizer: the model's tokenizer, needed with ``stored`` (for the check).

    Returns:
        ``(points, kept)``: one :class:`GridPoint` per combination, and the kept models.
    """
    if stored is not None and tokenizer is None:
        raise ValueError("stored qualities were given without tokenizer=: pass the model's "
                         "tokenizer, which the check against the stored embeddings needs")
    points, kept = [], {}
    for (observer, n), observed in snapshots.items():
        for label, names in sets.items():
            config = StaticConfig(observer=observer, modules=tuple(names))
            quantized, report = convert_observed(sweep.workload.model, observed, config)
            method = grid_label(observer, n, label)
            quality = None
            if stored is not None and method in stored:
                stored_quality.check(quantized, tokenizer, stored[method])
                quality = stored[method].quality()
            record = sweep.measure(method, quantized, report, quality=quality)
            points.append(GridPoint(observer, n, label, record))
            if (observer, n, label) in keep:
                kept[observer, n, label] = quantized
    return points, kept
