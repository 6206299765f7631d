"""SmoothQuant: move activation outliers into the weights, folded so inference pays nothing.

For a Linear ``y = x W^T`` and any positive per-input-channel vector ``s``,
``y = (x / s) (W * s)^T`` exactly. SmoothQuant (Xiao et al., 2023) picks

    s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha)

so that a channel ``j`` whose activations are large is divided down and its weight column
multiplied up: with ``alpha = 0.5`` both sides end with range ``sqrt(max|x_j| * max|W_j|)``;
``alpha = 1`` moves the whole activation range into the weights. Example: ``max|x| = (100, 1)``,
``max|W| = (1, 1)``, ``alpha = 0.5`` give ``s = (10, 1)``: the activation ranges become
``(10, 1)`` and the weight columns ``(10, 1)``.

The division by ``s`` is folded upstream so no extra pass runs: into the LayerNorm before the
Linear (its gamma and beta), or into the rows of the previous Linear (the value projection before
the attention output). In a post-LN BERT every LayerNorm output is also the next residual, so
that residual is multiplied back by ``s`` inside the existing add (``torch.addcmul``), and the
FFN output Linear, which sits after GELU, divides its input explicitly
(:class:`SmoothedBertResidual`). In the pre-LN GPT the LayerNorm folds are free; its ``fc_out``
(after GELU) is left unsmoothed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook.methods.base import QuantReport, select
from quantbook.methods.float_output import (
    FloatOutputConfig,
    build,
    channel_ranges,
    check_config,
)
from quantbook.methods.static import forward_batch
from quantbook.targets import model_family
from quantbook.validate import check_batches, check_model


def smooth_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5,
                  eps: float = 1e-5) -> torch.Tensor:
    """``s_j = max|x_j|**alpha / max|W_j|**(1 - alpha)``, both clamped below at ``eps``."""
    check_alpha(alpha)
    s = act_absmax.clamp(min=eps).pow(alpha) / weight_absmax.clamp(min=eps).pow(1 - alpha)
    return s.clamp(min=eps)


def check_alpha(alpha: object) -> None:
    """Refuse a migration strength outside [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not (
            math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha={alpha!r} is not supported: choose a number in [0, 1] (0 keeps "
                         "the activations as they are, 1 moves all their range into the "
                         "weights; 0.5 is the paper's default)")


def weight_col_absmax(linears: Sequence[nn.Linear]) -> torch.Tensor:
    """``max |W[:, j]|`` over the rows of every Linear that reads the same input, shape (C,)."""
    return torch.stack([lin.weight.detach().abs().amax(0) for lin in linears]).amax(0)


@torch.no_grad()
def fold_into_layernorm(norm: nn.LayerNorm, linears: Sequence[nn.Linear],
                        s: torch.Tensor) -> None:
    """LayerNorm output divided by ``s`` (gamma and beta), the Linears' columns times ``s``."""
    norm.weight.div_(s)
    if norm.bias is not None:
        norm.bias.div_(s)
    for lin in linears:
        lin.weight.mul_(s)


@torch.no_grad()
def fold_into_linear_rows(previous: nn.Linear, linears: Sequence[nn.Linear],
                          s: torch.Tensor) -> None:
    """``previous``'s output rows (and bias) divided by ``s``, the Linears' columns times ``s``.

    Exact when everything between is linear channel by channel, as the attention context
    ``softmax(Q K^T) V`` is in the channels of ``V``.
    """
    previous.weight.div_(s[:, None])
    if previous.bias is not None:
        previous.bias.div_(s)
    for lin in linears:
        lin.weight.mul_(s)


class SmoothedBertResidual(nn.Module):
    """A BERT ``BertSelfOutput`` / ``BertOutput`` with the smoothing multiplies fused in.

    ``LayerNorm(dropout(dense(hidden * inv_s)) + input_tensor * res_s)``, the residual product
    inside the add (``torch.addcmul``). ``inv_s`` undoes nothing: it smooths ``dense``'s input;
    ``res_s`` restores the residual whose LayerNorm was divided by ``s``.
    """

    def __init__(self, block: nn.Module, inv_s: torch.Tensor | None,
                 res_s: torch.Tensor | None) -> None:
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = block.dense, block.dropout, block.LayerNorm
        self.register_buffer("inv_s", inv_s)
        self.register_buffer("res_s", res_s)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.inv_s is not None:
            hidden_states = hidden_states * self.inv_s
        h = self.dropout(self.dense(hidden_states))
        if self.res_s is None:
            return self.LayerNorm(h + input_tensor)
        return self.LayerNorm(torch.addcmul(h, input_tensor, self.res_s))


@dataclass(frozen=True)
class Fold:
    """One smoothing: where ``1/s`` goes, which Linears take ``s``, what must be restored.

    Attributes:
        source: the LayerNorm or Linear whose output is divided by ``s``; ``""``: none, the
            input is divided explicitly in ``hidden`` (a Linear after GELU).
        linears: the Linears that read that output (their columns are multiplied by ``s``).
        residual: the BERT block whose residual input is that output, times ``s`` again.
        hidden: the BERT block that divides ``dense``'s input by ``s``.
    """

    source: str
    linears: tuple[str, ...]
    residual: str = ""
    hidden: str = ""


def fold_plan(model: nn.Module) -> list[Fold]:
    """The smoothings of quantbook's GPT (pre-LN) or a BERT (post-LN), layer by layer.

    Raises:
        ValueError: the model has no LayerNorm -> Linear pattern this module knows.
    """
    try:
        family = model_family(model)
    except TypeError:
        family = None
    if family == "gpt":
        plan = []
        for i in range(len(model.blocks)):
            p = f"blocks.{i}."
            plan += [Fold(p + "ln_1", tuple(p + f"attn.{x}_proj" for x in "qkv")),
                     Fold(p + "attn.v_proj", (p + "attn.out_proj",)),
                     Fold(p + "ln_2", (p + "mlp.fc_in",))]
        return [*plan, Fold("ln_f", ("lm_head",))]
    if family == "bert":
        plan = []
        for i in range(len(model.encoder.layer)):
            p = f"encoder.layer.{i}."
            norm = "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm"
            plan += [Fold(norm, tuple(p + f"attention.self.{x}" for x in ("query", "key", "value")),
                          residual=p + "attention.output"),
                     Fold(p + "attention.self.value", (p + "attention.output.dense",)),
                     Fold(p + "attention.output.LayerNorm", (p + "intermediate.dense",),
                          residual=p + "output"),
                     Fold("", (p + "output.dense",), hidden=p + "output")]
        return plan
    raise ValueError(
        f"a {type(model).__name__} has no LayerNorm -> Linear pattern that SmoothQuant can fold "
        "here: it knows quantbook's GPT and BERT models (MiniLM); for another model, fold the "
        "scales by hand with fold_into_layernorm / fold_into_linear_rows")


def smooth(model: nn.Module, absmax: dict[str, torch.Tensor], alpha: float,
           plan: Sequence[Fold] | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A smoothed copy of ``model`` (equal to it in float, up to rounding) and each Linear's s.

    Args:
        absmax: per-channel max |x| of each Linear's input (the first Linear of each fold).
        alpha: migration strength in [0, 1].
        plan: the folds (default: :func:`fold_plan`).
    """
    check_alpha(alpha)
    plan = fold_plan(model) if plan is None else plan
    smoothed = copy.deepcopy(model)
    residual: dict[str, torch.Tensor] = {}
    hidden: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for fold in plan:
        linears = [smoothed.get_submodule(n) for n in fold.linears]
        s = smooth_scales(absmax[fold.linears[0]], weight_col_absmax(linears), alpha)
        source = smoothed.get_submodule(fold.source) if fold.source else None
        if isinstance(source, nn.LayerNorm):
            fold_into_layernorm(source, linears, s)
        elif isinstance(source, nn.Linear):
            fold_into_linear_rows(source, linears, s)
        else:
            with torch.no_grad():
                for lin in linears:
                    lin.weight.mul_(s)
            hidden[fold.hidden] = 1.0 / s
        if fold.residual:
            residual[fold.residual] = s
        scales.update(dict.fromkeys(fold.linears, s))
    for name in dict.fromkeys([*residual, *hidden]):
        parent, _, child = name.rpartition(".")
        block = SmoothedBertResidual(smoothed.get_submodule(name), hidden.get(name),
                                     residual.get(name))
        setattr(smoothed.get_submodule(parent), child, block)
    return smoothed, scales


@dataclass(frozen=True)
class SmoothQuantConfig(FloatOutputConfig):
    """SmoothQuant folded into the model, then static W8A8 with float outputs.

    Attributes:
        alpha: migration strength in [0, 1]; 0.9 suits MiniLM, whose weights have headroom
            (the paper's 0.5 makes the GELU input's large-weight channels the new outliers).
    """

    alpha: float = 0.9

    family: ClassVar[str] = "SmoothQuant (static, float outputs)"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_alpha(self.alpha)

    @property
    def label(self) -> str:
        """E.g. ``"SmoothQuant a=0.9, static int8"``."""
        return f"SmoothQuant a={self.alpha:g}, static int8"


def quantize_smoothquant(model: nn.Module, config: SmoothQuantConfig, batches: Sequence,
                         run_fn: Callable[[nn.Module, object], None] = forward_batch
                         ) -> tuple[nn.Module, QuantReport]:
    """Smooth ``model`` with ``config.alpha``, then quantize it like :func:`quantize_float_output`.

    One calibration pass gives both the smoothing statistics and the int8 input ranges: the
    smoothed input is ``x / s`` channel by channel, so its range is the float range over ``s``.

    Returns:
        ``(quantized_copy, report)``; the report's ``float_modules`` include the LayerNorms
        that now hold ``gamma / s``.
    """
    check_config(config, SmoothQuantConfig)
    check_model(model, config.label)
    plan = fold_plan(model)
    batches = check_batches(model, batches)
    selection = select(model, config)
    names = list(dict.fromkeys([*selection.chosen, *(f.linears[0] for f in plan)]))
    ranges = channel_ranges(model, names, batches, run_fn)
    smoothed, scales = smooth(model, {n: r.absmax for n, r in ranges.items()}, config.alpha, plan)
    shifted = {n: ranges[n].scaled(1.0 / scales[n]) if n in scales else ranges[n]
               for n in selection.chosen}
    return build(smoothed, config, selection, shifted)
