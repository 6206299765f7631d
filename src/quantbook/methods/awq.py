"""AWQ (Lin et al., 2024): scale up the weight columns that meet large activations, then round.

Some input channels of a Linear carry much larger activations than others, and the weights
that multiply them matter more. AWQ multiplies those weight columns by ``s_j`` before rounding
(so they lose relatively less to it) and divides the activations by ``s_j`` (so the float
product is unchanged)::

    y = x W^T = (x / s) (W * s)^T        s_j = mean|x_j| ** alpha

``alpha`` is searched on a grid by the output error on calibration data; ``alpha = 0`` is RTN,
so on that objective AWQ never does worse than RTN. ``1 / s`` is folded into the operation
before the Linear where the model allows it (a LayerNorm's weight and bias, or the rows of
``v_proj`` before the attention output projection); elsewhere (after GELU, or after a
post-LayerNorm whose output also feeds the residual) the packed layer stores it as a small
``input_scale`` vector. With ``clip`` the range of each weight group is also shrunk where that
lowers the group's output error (AWQ's "auto clip").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook import affine
from quantbook.methods.base import MethodConfig, QuantReport, finish, select, swap_modules
from quantbook.methods.gptq import InputHooks, grid_label, grid_spec, group_rule
from quantbook.methods.packed import PackedLinear
from quantbook.validate import check_batches, check_model


@dataclass(frozen=True)
class AWQConfig(MethodConfig):
    """Settings for :func:`quantize_awq`: the RTN grid plus AWQ's searches."""

    bits: int = 4
    scheme: str = "symmetric"
    group_size: int | None = 32  # None: one scale per output channel
    n_grid: int = 20  # alpha in 0, 1/n, ..., (n-1)/n
    clip: bool = True  # also search a shrink ratio of each group's range
    clip_grid: int = 20  # ratios 1, 1 - 0.5/n, ..., 0.5 + 0.5/n
    max_tokens: int = 4096  # calibration rows kept per Linear (a random subset)
    fold: bool = True  # fold 1/s into the previous operation where the model allows it
    seed: int = 0

    family: ClassVar[str] = "AWQ (quantbook)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec()
        for name in ("n_grid", "clip_grid", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not supported: pass a positive int")

    def spec(self) -> affine.QuantSpec:
        """The grid of every weight."""
        return grid_spec(self.bits, self.scheme, self.group_size)

    @property
    def label(self) -> str:
        """E.g. ``"AWQ int3 group32"``."""
        label = grid_label("AWQ", self.bits, self.scheme, self.group_size)
        return label + ("" if self.clip else " no-clip")


class ScaledPackedLinear(PackedLinear):
    """A :class:`PackedLinear` that first multiplies its input by ``input_scale`` (``1/s``)."""

    def __init__(self, in_features: int, out_features: int, spec: affine.QuantSpec,
                 bias: bool = True) -> None:
        super().__init__(in_features, out_features, spec, bias=bias)
        self.register_buffer("input_scale", torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.input_scale.to(x.dtype))


def catch_inputs(model: nn.Module, names: Sequence[str], batches: Sequence, max_tokens: int,
                 seed: int) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """A random subset of each Linear's input rows, and the groups fed the very same tensor.

    Returns ``(groups, X)``: ``X[name]`` is ``(tokens, cols)``; q/k/v share one input, so
    they form one group and get one scale.
    """
    gen = torch.Generator().manual_seed(seed)
    per_batch = math.ceil(max_tokens / len(batches))
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    feeds: dict[str, tuple] = {}

    def take(name: str, x: torch.Tensor) -> None:
        feeds.setdefault(name, (float(x.sum()), float(x[:1].abs().sum())))  # fingerprint
        if x.shape[0] > per_batch:
            x = x[torch.randperm(x.shape[0], generator=gen)[:per_batch].sort().values]
        rows[name].append(x)

    InputHooks(model, names, take).run(model, batches)
    groups: dict[tuple, list[str]] = {}
    for name in names:
        groups.setdefault((rows[name][0].shape, feeds[name]), []).append(name)
    return list(groups.values()), {n: torch.cat(rows[n]) for n in names}


def _rtn(W: torch.Tensor, spec: affine.QuantSpec) -> torch.Tensor:
    return affine.fake_quantize(W, affine.choose_qparams(W, spec))


@torch.no_grad()
def search_scale(X: torch.Tensor, weights: Sequence[torch.Tensor], spec: affine.QuantSpec,
                 n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """The best ``s`` for Linears that share the input ``X`` (tokens, cols).

    Returns ``(s, alpha, losses)``; ``losses[i]`` is the summed mean squared output error at
    ``alpha = i / n_grid`` (``losses[0]`` is RTN's).
    """
    x_mean = X.abs().mean(0)  # (cols,)
    refs = [X @ W.T for W in weights]
    losses, best = [], (math.inf, torch.ones_like(x_mean), 0.0)
    for i in range(n_grid):
        alpha = i / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # centred on 1 (log scale)
        loss = sum(float((ref - X @ (_rtn(W * s, spec) / s).T).pow(2).mean())
                   for W, ref in zip(weights, refs, strict=True))
        losses.append(loss)
        if loss < best[0]:
            best = (loss, s, alpha)
    return best[1], best[2], losses


def _group_qparams(W: torch.Tensor, spec: affine.QuantSpec, ratio: torch.Tensor | float
                   ) -> affine.QParams:
    """Min-max qparams of each group of ``W`` with its range shrunk by ``ratio``."""
    rows, cols = W.shape
    gs = spec.group_size if spec.granularity == "group" else cols
    Wg = W.reshape(rows, cols // gs, gs)  # (rows, groups, gs)
    qmin, qmax = affine.qrange(spec.bits, spec.scheme)
    scale, zero = affine.scale_zero_point(Wg.amin(-1) * ratio, Wg.amax(-1) * ratio, qmin, qmax,
                                          spec.scheme)
    qshape = (rows, cols // gs) if spec.granularity == "group" else (rows,)
    return affine.QParams(scale.reshape(qshape).contiguous(), zero.reshape(qshape).contiguous(),
                          spec, qmin, qmax)


@torch.no_grad()
def search_clip(X: torch.Tensor, W: torch.Tensor, spec: affine.QuantSpec, n_grid: int = 20,
                max_rows: int = 512) -> torch.Tensor:
    """Per (row, group) shrink ratio in [0.5, 1] minimising that group's output error."""
    rows, cols = W.shape
    gs = spec.group_size if spec.granularity == "group" else cols
    Xs = X[:: max(1, X.shape[0] // max_rows)][:max_rows]  # (n, cols)
    Wg = W.reshape(rows, cols // gs, gs)  # (rows, G, gs)
    Xg = Xs.reshape(-1, cols // gs, gs)  # (n, G, gs)
    ref = torch.einsum("ngk,rgk->nrg", Xg, Wg)  # each group's share of the output
    best_err = torch.full((rows, cols // gs), math.inf)
    best = torch.ones(rows, cols // gs)
    for i in range(n_grid):
        ratio = 1 - 0.5 * i / n_grid
        qp = _group_qparams(W, spec, ratio)
        dq = affine.fake_quantize(W, qp).reshape(rows, cols // gs, gs)
        err = (torch.einsum("ngk,rgk->nrg", Xg, dq) - ref).pow(2).mean(0)  # (rows, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best


def fold_target(model: nn.Module, names: Sequence[str]) -> nn.Module | None:
    """The operation whose output is exactly the input of ``names`` and can absorb ``1/s``.

    quantbook's GPT (pre-LayerNorm): q/k/v <- ln_1, fc_in <- ln_2, lm_head <- ln_f, out_proj
    <- v_proj (the attention output is linear in v); fc_out follows GELU: no fold. A BERT
    (post-LayerNorm): only attention.output.dense <- attention.self.value, since the other
    LayerNorm outputs also feed the residual stream.
    """
    first = names[0]
    prefix, _, leaf = first.rpartition(".")
    block = prefix.rpartition(".")[0]
    if hasattr(model, "blocks"):  # quantbook's GPT
        owners = {"q_proj": f"{block}.ln_1", "k_proj": f"{block}.ln_1",
                  "v_proj": f"{block}.ln_1", "fc_in": f"{block}.ln_2",
                  "out_proj": f"{prefix}.v_proj"}
        if first == "lm_head":
            return model.ln_f
        return model.get_submodule(owners[leaf]) if leaf in owners and block else None
    if first.endswith("attention.output.dense"):
        return model.get_submodule(first.replace("output.dense", "self.value"))
    return None


@torch.no_grad()
def fold_scale(previous: nn.Module, s: torch.Tensor) -> None:
    """Divide ``previous``'s output by ``s`` (per feature), in place."""
    if isinstance(previous, nn.LayerNorm):
        previous.weight.div_(s)
        if previous.bias is not None:
            previous.bias.div_(s)
    elif isinstance(previous, nn.Linear):
        previous.weight.div_(s[:, None])
        if previous.bias is not None:
            previous.bias.div_(s)
    else:
        raise TypeError(f"cannot fold a scale into a {type(previous).__name__}")


def quantize_awq(model: nn.Module, config: AWQConfig, batches: Sequence
                 ) -> tuple[nn.Module, QuantReport]:
    """A copy of ``model`` with AWQ-scaled, packed Linears, and a report.

    Every scale is searched on the float model's inputs first; then ``1/s`` is folded where
    possible and each ``W * s`` is rounded (clipped, with ``config.clip``) and packed.
    """
    if not isinstance(config, AWQConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected an AWQConfig")
    check_model(model, config.label)
    batches = check_batches(model, batches)
    selection = select(model, config, group_rule(config, config.group_size))
    spec = config.spec()
    groups, X = catch_inputs(model, selection.chosen, batches, config.max_tokens, config.seed)
    scales = {}
    for names in groups:
        weights = [model.get_submodule(n).weight.detach().float() for n in names]
        s, _, _ = search_scale(X[names[0]], weights, spec, config.n_grid)
        scales.update(dict.fromkeys(names, s))
    folded = swap_modules(model, (), lambda name, module: module)  # a deep copy to edit
    explicit = set()
    for names in groups:
        previous = fold_target(folded, names) if config.fold else None
        if previous is None:
            explicit.update(names)
        else:
            fold_scale(previous, scales[names[0]])

    def build(name: str, linear: nn.Module) -> nn.Module:
        s = scales[name]
        Ws = linear.weight.detach().float() * s  # after the folds (v_proj absorbed 1/s)
        if config.clip:
            qparams = _group_qparams(Ws, spec, search_clip(X[name] / s, Ws, spec,
                                                           config.clip_grid))
        else:  # plain RTN of W * s
            qparams = affine.choose_qparams(Ws, spec)
        packed = PackedLinear.from_codes(linear, affine.quantize(Ws, qparams), qparams)
        if name not in explicit:
            return packed
        scaled = ScaledPackedLinear(linear.in_features, linear.out_features, spec,
                                    bias=linear.bias is not None)
        scaled.load_state_dict(packed.state_dict(), strict=False)
        scaled.input_scale.copy_(1.0 / s)
        return scaled

    quantized = swap_modules(folded, selection.chosen, build, share=True)
    return finish(quantized, config, selection, lambda m: isinstance(m, PackedLinear))

