"""GPTQ (Frantar et al., 2023): round each weight column, then let the others absorb the error.

For one Linear with weight ``W`` (rows x cols) and calibration inputs ``X`` (tokens x cols),
GPTQ looks for codes whose dequantized weight ``Q`` keeps ``X W^T`` close to ``X Q^T``. That
loss is a quadratic form in each row with the same Hessian ``H = 2 X^T X / tokens``, so:

1. quantize one input column at a time, left to right (or by decreasing ``H_jj``,
   ``act_order``);
2. after rounding column ``j``, move its error onto the columns not yet quantized, weighted by
   the inverse Hessian: ``W[:, j+1:] -= err_j / Hinv_jj * Hinv[j, j+1:]``;
3. take those rows from the upper Cholesky factor of ``H^-1``, computed once;
4. apply step 2 inside blocks of ``block_size`` columns and to the columns right of a block
   once per block ("lazy batch updates": one matrix product instead of many outer products).

The codes lie on the grid of :mod:`quantbook.affine`, so they pack into a
:class:`~quantbook.methods.packed.PackedLinear` and the bytes are those of RTN at the same
``bits`` and ``group_size``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook import affine
from quantbook.grid import check_group_size
from quantbook.methods.base import MethodConfig, QuantReport, finish, select, swap_modules
from quantbook.methods.packed import PackedLinear
from quantbook.validate import check_batches, check_model


@dataclass(frozen=True)
class GPTQConfig(MethodConfig):
    """Settings for :func:`quantize_gptq`: the RTN grid plus GPTQ's own knobs."""

    bits: int = 4
    scheme: str = "symmetric"
    group_size: int | None = 32  # None: one scale per output channel
    damp: float = 0.01  # fraction of mean(diag H) added to H's diagonal (0: none)
    block_size: int = 128  # lazy-batch width in columns
    act_order: bool = False  # quantize columns by decreasing H_jj (scales fixed up front)
    sequential: bool = True  # block k's inputs come from the model with blocks < k quantized

    family: ClassVar[str] = "GPTQ (quantbook)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec()  # raises for bad bits / scheme / group_size
        if isinstance(self.damp, bool) or not isinstance(self.damp, int | float) \
                or not 0 <= self.damp < 1:
            raise ValueError(f"damp={self.damp!r} is not supported: choose a fraction in "
                             "[0, 1), e.g. 0.01")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) \
                or self.block_size < 1:
            raise ValueError(f"block_size={self.block_size!r} is not supported: pass a "
                             "positive int such as 128")

    def spec(self) -> affine.QuantSpec:
        """The grid of every weight: ``group_size`` inputs per scale, or one per channel."""
        return grid_spec(self.bits, self.scheme, self.group_size)

    @property
    def label(self) -> str:
        """E.g. ``"GPTQ int3 group32 act-order"``."""
        return grid_label("GPTQ", self.bits, self.scheme, self.group_size) + (
            " act-order" if self.act_order else "")


def grid_spec(bits: int, scheme: str, group_size: int | None) -> affine.QuantSpec:
    """The weight grid of the low-bit methods: groups of ``group_size``, or per channel."""
    granularity = "channel" if group_size is None else "group"
    return affine.QuantSpec(bits=bits, scheme=scheme, granularity=granularity,
                            group_size=group_size)


def grid_label(method: str, bits: int, scheme: str, group_size: int | None) -> str:
    """E.g. ``grid_label("AWQ", 3, "symmetric", 32) == "AWQ int3 group32"``."""
    how = "per-channel" if group_size is None else f"group{group_size}"
    return f"{method} int{bits} {how}{' asymmetric' if scheme == 'asymmetric' else ''}"


class InputHooks:
    """Forward pre-hooks that hand each named Linear's input rows to ``take(name, rows)``.

    Rows at padded positions are dropped: set :attr:`mask` to the batch's attention mask
    ``(B, T)`` before the forward pass (``None`` keeps every row).
    """

    def __init__(self, model: nn.Module, names: Sequence[str],
                 take: Callable[[str, torch.Tensor], None]) -> None:
        self.mask: torch.Tensor | None = None
        self.handles = [model.get_submodule(n).register_forward_pre_hook(self._hook(n, take))
                        for n in names]

    def _hook(self, name: str, take: Callable[[str, torch.Tensor], None]):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()  # (B, T, cols)
            if self.mask is not None and tuple(self.mask.shape) == tuple(x.shape[:-1]):
                x = x[self.mask.bool()]  # (real tokens, cols)
            take(name, x.reshape(-1, x.shape[-1]))  # (tokens, cols)
        return hook

    def run(self, model: nn.Module, batches: Sequence) -> None:
        """Feed every batch through ``model`` (a dict as keyword arguments), then unhook."""
        try:
            with torch.no_grad():
                for batch in batches:
                    self.mask = batch.get("attention_mask") if isinstance(batch, dict) else None
                    model(**batch) if isinstance(batch, dict) else model(batch)
        finally:
            for handle in self.handles:
                handle.remove()


def collect_hessians(model: nn.Module, names: Sequence[str], batches: Sequence
                     ) -> dict[str, torch.Tensor]:
    """``H = 2 X^T X / tokens`` of each named Linear's inputs over ``batches``."""
    sums = {n: torch.zeros(model.get_submodule(n).in_features,
                           model.get_submodule(n).in_features) for n in names}
    counts = dict.fromkeys(names, 0)

    def take(name: str, x: torch.Tensor) -> None:
        sums[name] += x.T @ x  # (cols, cols)
        counts[name] += x.shape[0]

    InputHooks(model, names, take).run(model, batches)
    return {n: 2 * sums[n] / max(counts[n], 1) for n in names}


def _inverse_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; refuses a singular H."""
    cols = H.shape[0]
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(cols)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError(
            f"the Hessian ({cols}x{cols}) is singular or not positive definite (damp={damp}): "
            "the calibration inputs do not span every input direction. Set damp > 0 (0.01 "
            "is usual) or calibrate on more tokens")
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, spec: affine.QuantSpec, *,
                         damp: float = 0.01, block_size: int = 128, act_order: bool = False
                         ) -> tuple[torch.Tensor, affine.QParams, float]:
    """GPTQ for one weight: ``(codes (rows, cols) int32, qparams, loss)``.

    ``qparams`` has quantbook's layout, ``(rows, cols // group_size)`` or ``(rows,)``. A
    group's scale is chosen when its first column comes up, from the weights as updated so far
    (as the paper's code does); with ``act_order`` every scale is chosen up front from ``W``,
    so each group stays a contiguous slice of its row. ``loss`` estimates the summed squared
    output error, ``sum (w - q)^2 / (2 Hinv_jj^2)``. With ``H = I`` and ``damp = 0`` GPTQ is
    RTN: the inverse Hessian has no off-diagonal terms to move errors along.
    """
    affine.check_float_tensor(W, "W")
    rows, cols = W.shape
    if tuple(H.shape) != (cols, cols):
        raise ValueError(f"H has shape {tuple(H.shape)}: expected ({cols}, {cols}), the "
                         "Gram matrix of the layer's inputs")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("H holds NaN or inf: the calibration activations were not finite; "
                         "check the model's outputs on the calibration batches")
    gs = spec.group_size if spec.granularity == "group" else cols
    if spec.granularity == "group":
        check_group_size(gs, cols, "the weight's columns")
    elif spec.granularity != "channel":
        raise ValueError(f"granularity={spec.granularity!r} is not supported by GPTQ: "
                         "choose 'channel' or 'group'")
    W, H = W.detach().float().clone(), H.detach().float().clone()
    qmin, qmax = affine.qrange(spec.bits, spec.scheme)
    group_spec = affine.QuantSpec(bits=spec.bits, scheme=spec.scheme, granularity="group",
                                  group_size=gs)
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights never matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    scale = torch.empty(rows, cols // gs)
    zero = torch.empty(rows, cols // gs, dtype=torch.int32)
    perm = torch.arange(cols)
    if act_order:  # static groups: scales from the original weight, then reorder columns
        qp = affine.choose_qparams(W, group_spec)
        scale[:], zero[:] = qp.scale, qp.zero_point
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_factor(H, damp)
    codes = torch.zeros(rows, cols, dtype=torch.int32)
    loss = torch.zeros(rows)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()  # (rows, B): this block, updated column by column
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            g = int(perm[j]) // gs  # the group of the original column
            if not act_order and j % gs == 0:  # first column of a group: fix its grid
                window = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :gs]  # latest values
                qp = affine.choose_qparams(window, group_spec)
                scale[:, g], zero[:, g] = qp.scale[:, 0], qp.zero_point[:, 0]
            w = W1[:, i]
            q = affine.quantize_affine(w, scale[:, g], zero[:, g], qmin, qmax)
            err = (w - affine.dequantize_affine(q, scale[:, g], zero[:, g])) / Hinv1[i, i]
            codes[:, j] = q
            loss += err**2 / 2
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]  # feed the error forward
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the later blocks
    codes = codes[:, torch.argsort(perm)]
    qshape = (rows, cols // gs) if spec.granularity == "group" else (rows,)
    qparams = affine.QParams(scale.reshape(qshape).contiguous(),
                             zero.reshape(qshape).contiguous(), spec, qmin, qmax)
    return codes, qparams, float(loss.sum())


def stages(names: Sequence[str]) -> list[list[str]]:
    """Module names grouped by transformer block, in order (``blocks.3.`` / ``layer.3.``)."""
    grouped: OrderedDict[str, list[str]] = OrderedDict()
    for name in names:
        parts = name.split(".")
        key = name
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():  # the first numbered container is the block
                key = ".".join(parts[:i + 1])
                break
        grouped.setdefault(key, []).append(name)
    return list(grouped.values())


def group_rule(config: MethodConfig, group_size: int | None):
    """``select``'s accept rule: the group size must divide every chosen row."""
    def accept(name: str, module: nn.Module) -> str | None:
        if group_size is not None:
            check_group_size(group_size, module.in_features,
                             f"the in_features of module {name!r}")
        return None
    return accept


def run_gptq(model: nn.Module, config: MethodConfig, batches: Sequence,
             spec_for: Callable[[str], affine.QuantSpec], *, damp: float, block_size: int,
             act_order: bool, sequential: bool, group_size: int | None
             ) -> tuple[nn.Module, QuantReport]:
    """GPTQ on every selected Linear, with ``spec_for(name)`` as its grid (mixed widths)."""
    check_model(model, config.label)
    batches = check_batches(model, batches)
    selection = select(model, config, group_rule(config, group_size))
    quantized = model
    for stage in (stages(selection.chosen) if sequential else [list(selection.chosen)]):
        hessians = collect_hessians(quantized, stage, batches)

        def build(name: str, linear: nn.Module, hessians=hessians) -> nn.Module:
            codes, qparams, _ = gptq_quantize_weight(
                linear.weight, hessians[name], spec_for(name), damp=damp,
                block_size=block_size, act_order=act_order)
            return PackedLinear.from_codes(linear, codes, qparams)

        quantized = swap_modules(quantized, stage, build, share=quantized is not model)
    return finish(quantized, config, selection, lambda m: isinstance(m, PackedLinear))


def quantize_gptq(model: nn.Module, config: GPTQConfig, batches: Sequence
                  ) -> tuple[nn.Module, QuantReport]:
    """A copy of ``model`` whose selected Linears hold GPTQ codes, packed, and a report.

    Args:
        model: a float32 CPU model (quantbook's GPT, MiniLM, or any model of Linears).
        config: the grid and GPTQ's settings.
        batches: calibration batches (token ids, or a tokenizer's dicts); with
            ``config.sequential`` they run once per transformer block.
    """
    if not isinstance(config, GPTQConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a GPTQConfig")
    spec = config.spec()
    return run_gptq(model, config, batches, lambda name: spec, damp=config.damp,
                    block_size=config.block_size, act_order=config.act_order,
                    sequential=config.sequential, group_size=config.group_size)

