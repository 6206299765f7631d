"""Honest measurement of size and latency.

Size is the length of the serialized ``state_dict``, because that is what a quantized model
really stores: ``sum(p.numel() for p in model.parameters())`` misses every tensor that is not an
``nn.Parameter``. Eager-mode quantized modules (``torch.ao.quantization.quantize_dynamic``) keep
their int8 weight and its scales in a packed parameter object that ``parameters()`` never yields,
so counting parameters would report a quantized Linear as *empty*.

Latency is a distribution, not a number. :func:`time_fn` reports the median and spread over
repeats after a warm-up, and :func:`compare_latency` interleaves the candidates so that every
model sees the same machine state (turbo, other tenants, cache warmth) - ratios measured that
way are far more stable than two runs made one after the other.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np
import torch
from torch import nn

from quantbook.machine import cpu_model


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous setting."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is not supported: pass a positive number of threads")
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _check_real(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model is a {type(model).__name__}: expected a torch.nn.Module "
            "(pass the model itself, not its state_dict)"
        )
    if any(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()]):
        raise ValueError("model has tensors on the meta device, which hold no data, so it "
                         "has no size to measure: load its weights first")


def size_bytes(model: nn.Module, modules: Iterable[str] | None = None) -> int:
    """Return the size in bytes of ``torch.save(model.state_dict())``.

    The state dict holds parameters, buffers and the packed weights of quantized modules, so this
    counts what a quantized model stores (int8 codes, scales, zero points) plus a small
    serialization overhead (tensor names, metadata and zip headers).

    Example: a float ``nn.Linear(256, 256)`` has 65,792 float32 values, 263,168 bytes of data;
    ``size_bytes`` returns that plus about 1.8 KB.

    Args:
        model: the model to measure.
        modules: measure only these submodules' state dicts (saved together in one file), e.g.
            the modules a method converted.
    """
    _check_real(model)
    if isinstance(modules, str):
        raise TypeError(f"modules={modules!r} is a single string: pass a list of module names")
    if modules is None:
        state = model.state_dict()
    else:
        state = {name: model.get_submodule(name).state_dict() for name in modules}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of tensor data in ``model.state_dict()``: what ``size_bytes`` saves, minus headers.

    Quantized tensors count their codes only (``element_size`` of ``qint8`` is 1); eager
    quantized modules keep scales inside packed parameters that this does not see, so compare
    it with :func:`size_bytes` for quantbook's packed modules and float models.
    """
    _check_real(model)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()
               if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class Timing:
    """Wall-clock latency of one callable over repeated calls, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float  # 75th minus 25th percentile: the spread, robust to a few slow outliers
    n_repeats: int
    warmup: int  # calls made before timing started, not counted
    threads: int  # torch.get_num_threads() during the measurement
    cpu: str


def _check_counts(warmup: int, repeats: int) -> None:
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not supported: choose an integer >= {low}")


def _summarize(samples_ns: list[int], warmup: int, cpu: str) -> Timing:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return Timing(
        median_ms=float(p50),
        p10_ms=float(p10),
        p90_ms=float(p90),
        iqr_ms=float(p75 - p25),
        n_repeats=len(samples_ns),
        warmup=warmup,
        threads=torch.get_num_threads(),
        cpu=cpu,
    )


def compare_latency(
    fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 20,
    max_s: float | None = None, min_repeats: int = 3,
) -> dict[str, Timing]:
    """Time several zero-argument callables side by side, alternating between them.

    Each round calls every candidate once, in the order given, so slow drifts of the machine
    hit all candidates alike. Warm-up rounds run first and are not timed. Everything runs under
    ``torch.inference_mode()``.

    Args:
        fns: name -> zero-argument callable, e.g. ``{"float": lambda: model(x)}``.
        warmup: untimed rounds before measuring (first calls pay for allocation, packing...).
        repeats: timed rounds; each candidate gets this many samples.
        max_s: stop after the round in which the timed rounds passed this many seconds, once
            ``min_repeats`` rounds are done (``None``: always ``repeats`` rounds). Each
            :class:`Timing` says how many rounds it got (``n_repeats``).
        min_repeats: the rounds ``max_s`` never cuts below (at most ``repeats``).

    Returns:
        name -> :class:`Timing`, in the order of ``fns``.
    """
    _check_counts(warmup, repeats)
    if isinstance(min_repeats, bool) or not isinstance(min_repeats, int) or min_repeats < 1:
        raise ValueError(f"min_repeats={min_repeats!r} is not supported: choose an integer >= 1")
    if max_s is not None and (isinstance(max_s, bool) or not isinstance(max_s, int | float)
                              or not max_s > 0):
        raise ValueError(f"max_s={max_s!r} is not supported: pass seconds > 0, or None for "
                         "every one of the repeats")
    if not isinstance(fns, Mapping) or not fns:
        raise ValueError(
            f"fns={fns!r} is not supported: pass a non-empty dict of name -> callable"
        )
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"fns[{name!r}] is a {type(fn).__name__}: expected a callable")
    names = list(fns)
    samples: dict[str, list[int]] = {name: [] for name in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        timed_ns = 0
        for done in range(1, repeats + 1):
            for name in names:
                start = perf_counter_ns()
                fns[name]()
                samples[name].append(perf_counter_ns() - start)
                timed_ns += samples[name][-1]
            if max_s is not None and done >= min_repeats and timed_ns >= max_s * 1e9:
                break
    cpu = cpu_model()
    return {name: _summarize(samples[name], warmup, cpu) for name in names}


def time_fn(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 20) -> Timing:
    """Time one zero-argument callable: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Example: ``time_fn(lambda: model(x)).median_ms``.
    """
    if not callable(fn):
        raise TypeError(f"fn is a {type(fn).__name__}: expected a zero-argument callable")
    return compare_latency({"fn": fn}, warmup=warmup, repeats=repeats)["fn"]


def speedup(baseline: Timing, other: Timing) -> float:
    """Return how many times faster ``other`` is than ``baseline``, by median latency.

    Example: baseline 12 ms, other 4 ms -> 3.0. Values below 1 mean ``other`` is slower.
    """
    for name, timing in (("baseline", baseline), ("other", other)):
        if not isinstance(timing, Timing):
            raise TypeError(f"{name} is a {type(timing).__name__}: expected a Timing")
    if other.median_ms <= 0:
        raise ValueError(f"other.median_ms={other.median_ms} must be positive to form a ratio")
    return baseline.median_ms / other.median_ms
