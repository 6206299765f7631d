"""Chapter 05 helpers: what static quantization's observers see, and what their ranges cost.

The quantization itself is :mod:`quantbook.methods.static`; this module looks inside it.

* :func:`wrap_linears` builds the input that torch's own ``quantize(model, run_fn, run_args)``
  expects, so that the chapter can compare it with ``quantize_static``.
* :func:`capture` records what a few Linears receive and return while a model runs (during
  calibration, say), and :func:`observe_range` feeds those tensors to fresh PyTorch observers.
* :func:`requant_sqnr_db`, :func:`dynamic_sqnr_db` and :func:`requant_damage` measure what a
  fixed (static) or per-call (dynamic) activation grid does to those tensors.

The calibration grid (observers x calibration sizes x Linear sets) is
:mod:`quantbook.explore_calibration`; the chapter's figures and explorers are
:mod:`quantbook.explore_static_figures`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from quantbook.affine import sqnr_db
from quantbook.methods.base import swap_modules
from quantbook.methods.dynamic import dynamic_activation_qparams, engine_reduces_range
from quantbook.methods.static import OBSERVERS, StaticConfig, qconfig
from quantbook.quiet import quiet_torch_ao


def float_linear(model: nn.Module, name: str) -> nn.Linear:
    """The float Linear at ``name``, looking inside a prepared ``QuantWrapper``."""
    module = model.get_submodule(name)
    module = getattr(module, "module", module)  # QuantWrapper(quant, module, dequant)
    if type(module) is not nn.Linear:
        raise ValueError(f"{name!r} is a {type(module).__name__}: capture and observe float "
                         "nn.Linear layers (before convert), e.g. from list_targets(model)")
    return module


def wrap_linears(model: nn.Module, names: Sequence[str], qconfig) -> nn.Module:
    """A copy of ``model`` with each named Linear in a ``QuantWrapper`` that carries ``qconfig``.

    That is the model torch's ``quantize(model, run_fn, run_args)`` expects: it prepares it,
    calls ``run_fn(prepared, *run_args)`` and converts it. ``prepare_static`` wraps the same
    way, then runs torch's ``prepare`` itself.
    """
    from torch.ao.quantization import QuantWrapper

    def wrap(name: str, _module: nn.Module) -> nn.Module:
        wrapper = QuantWrapper(copy.deepcopy(float_linear(model, name)))
        wrapper.qconfig = qconfig
        return wrapper

    return swap_modules(model, names, wrap).eval()


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, dict[str, list]]]:
    """Record the input and output of each named Linear on every call inside the block.

    Works on float and prepared models. Yields ``{name: {"input": [...], "output": [...]}}``,
    one detached copy per call, filled while the block runs.
    """
    store = {name: {"input": [], "output": []} for name in names}
    handles = []
    for name in names:
        def hook(_module, args, output, name=name):
            store[name]["input"].append(args[0].detach().clone())
            store[name]["output"].append(output.detach().clone())
        handles.append(float_linear(model, name).register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class ObservedRange:
    """The interval an observer's ``scale`` and ``zero_point`` make representable."""

    low: float
    high: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int


def range_of(observer: nn.Module) -> ObservedRange:
    """Read ``calculate_qparams()`` of a PyTorch observer as a range ``[low, high]``."""
    scale, zero_point = observer.calculate_qparams()
    scale, zero_point = float(scale), int(zero_point)
    qmin, qmax = int(observer.quant_min), int(observer.quant_max)
    return ObservedRange(scale * (qmin - zero_point), scale * (qmax - zero_point), scale,
                         zero_point, qmin, qmax)


def make_observer(observer: str) -> nn.Module:
    """A fresh activation observer exactly as :func:`quantbook.methods.static.qconfig` builds it."""
    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r} is not supported: choose one of {OBSERVERS}")
    with quiet_torch_ao():
        return qconfig(StaticConfig(observer=observer)).activation()


def observe_range(observer: str, batches: Sequence[torch.Tensor]) -> ObservedRange:
    """Feed the tensors to a fresh observer, one call per batch, and return its range."""
    if not batches:
        raise ValueError("batches is empty: pass the tensors of at least one calibration batch")
    obs = make_observer(observer)
    with torch.no_grad():
        for x in batches:
            obs(x)
    return range_of(obs)


def requant_sqnr_db(batches: Sequence[torch.Tensor], scale: float, zero_point: int,
                    qmin: int = 0, qmax: int = 127) -> float:
    """SQNR in dB of fake-quantizing all ``batches`` with one fixed scale and zero point."""
    x = torch.cat([b.flatten() for b in batches])
    approx = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return sqnr_db(x, approx)


def dynamic_sqnr_db(batches: Sequence[torch.Tensor]) -> float:
    """SQNR in dB when each batch is quantized with its own range, as dynamic quantization does."""
    xs, approx = [], []
    reduce_range = engine_reduces_range()  # 7-bit codes, or 8 under qnnpack
    for b in batches:
        scale, zero_point = dynamic_activation_qparams(b, reduce_range)
        xs.append(b.flatten())
        approx.append(torch.fake_quantize_per_tensor_affine(
            b.flatten(), scale, zero_point, 0, 127 if reduce_range else 255))
    return sqnr_db(torch.cat(xs), torch.cat(approx))


def requant_damage(batches: Sequence[torch.Tensor], observed: ObservedRange) -> dict:
    """What one fixed per-tensor grid does to a (tokens, channels) activation, channel by channel.

    Returns:
        ``{"top_channel", "top_absmax", "median_abs", "zero_fraction", "sqnr_db",
        "rest_sqnr_db"}``: the channel with the largest ``|x|`` and that value, the median
        ``|x|``, the share of values that come back as exactly 0, and the SQNR over all
        channels and over all channels but the top one.
    """
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in batches])  # (tokens, channels)
    approx = torch.fake_quantize_per_tensor_affine(x, observed.scale, observed.zero_point,
                                                   observed.qmin, observed.qmax)
    absmax = x.abs().amax(dim=0)  # (channels,)
    top = int(absmax.argmax())
    rest = torch.arange(x.shape[1]) != top
    return {"top_channel": top, "top_absmax": float(absmax[top]),
            "median_abs": float(x.abs().median()),
            "zero_fraction": float((approx == 0).float().mean()),
            "sqnr_db": sqnr_db(x, approx), "rest_sqnr_db": sqnr_db(x[:, rest], approx[:, rest])}
