"""Quantization-aware training (QAT): fine-tune through the rounding the packed model will do.

:func:`prepare_qat` swaps each selected Linear for a :class:`FakeQuantLinear`: it keeps its
float weight (what the optimizer updates) but multiplies its input by the *fake-quantized*
weight, on exactly the grid weight-only quantization stores (same ``QuantSpec``, min-max
scales recomputed from the current weight at every step). Rounding has zero gradient almost
everywhere, so the backward pass treats it as the identity: the straight-through estimator::

    w_q = w + (fake_quantize(w) - w).detach()    # forward: w_q; backward: d w_q / d w = 1

:func:`train_qat` fine-tunes the GPT on its training text; :func:`convert_qat` packs the
trained weights with RTN, which reproduces the training-time forward pass exactly.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from quantbook import affine
from quantbook.checkpoint import load_tensors, save_tensors
from quantbook.methods.base import MethodConfig, QuantReport, finish, select, swap_modules
from quantbook.methods.gptq import group_rule
from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weight_only
from quantbook.train import learning_rate
from quantbook.validate import check_model


@dataclass(frozen=True)
class QATConfig(MethodConfig):
    """The grid to train for (as weight-only RTN) and the fine-tuning schedule."""

    bits: int = 2
    scheme: str = "symmetric"
    group_size: int | None = 32  # None: one scale per output channel
    steps: int = 120
    batch_size: int = 16  # windows of block_size tokens per step
    lr: float = 1e-3  # peak learning rate (half the GPT's pre-training peak)
    min_lr: float = 1e-4
    warmup: int = 20
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0

    family: ClassVar[str] = "QAT (quantbook)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.weight_only()  # raises for bad bits / scheme / group_size
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not supported: pass a positive int")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup={self.warmup!r} is out of range: choose 0..steps="
                             f"{self.steps}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"lr={self.lr!r}, min_lr={self.min_lr!r}: expected "
                             "0 < min_lr <= lr, e.g. lr=1e-3, min_lr=1e-4")

    def weight_only(self) -> WeightOnlyConfig:
        """The RTN config that packs the trained weights (same grid, same selection)."""
        granularity = "channel" if self.group_size is None else "group"
        return WeightOnlyConfig(bits=self.bits, scheme=self.scheme, granularity=granularity,
                                group_size=self.group_size, targets=self.targets,
                                exclude=self.exclude, modules=self.modules)

    @property
    def label(self) -> str:
        """E.g. ``"QAT int2 group32"``."""
        return self.weight_only().label.replace("weight-only", "QAT")


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` computing with its fake-quantized weight; gradients pass straight through."""

    def __init__(self, in_features: int, out_features: int, spec: affine.QuantSpec,
                 bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.spec = spec

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: affine.QuantSpec) -> FakeQuantLinear:
        module = cls(linear.in_features, linear.out_features, spec, bias=linear.bias is not None)
        module.load_state_dict(linear.state_dict())
        return module

    def quantized_weight(self) -> torch.Tensor:
        """The weight on the grid in the forward pass, the identity in the backward pass."""
        w = self.weight
        with torch.no_grad():
            wq = affine.fake_quantize(w.detach(), affine.choose_qparams(w.detach(), self.spec))
        return w + (wq - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


def prepare_qat(model: nn.Module, config: QATConfig) -> tuple[nn.Module, QuantReport]:
    """A trainable copy of ``model`` with :class:`FakeQuantLinear` layers, in train mode."""
    if not isinstance(config, QATConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a QATConfig")
    check_model(model, config.label)
    selection = select(model, config, group_rule(config, config.group_size))
    spec = config.weight_only().spec()
    prepared = swap_modules(model, selection.chosen,
                            lambda name, linear: FakeQuantLinear.from_linear(linear, spec))
    prepared, report = finish(prepared, config, selection,
                              lambda m: isinstance(m, FakeQuantLinear))
    return prepared.train(), report


@dataclass
class QATHistory:
    """Training cross-entropy per step (nats per token) and the evaluations along the way."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_value: list[float] = field(default_factory=list)
    train_cpu_s: float = 0.0  # process CPU seconds of the training steps, evaluations excluded


def train_qat(prepared: nn.Module, train_ids: torch.Tensor, config: QATConfig, *,
              evaluate: Callable[[nn.Module], float] | None = None, eval_every: int = 0,
              progress: Callable[[int, float], None] | None = None) -> QATHistory:
    """Fine-tune a prepared GPT in place with AdamW, warmup and cosine decay.

    Args:
        prepared: from :func:`prepare_qat`, in train mode.
        train_ids: the training text's token ids (1-D LongTensor); random windows of
            ``block_size + 1`` tokens are drawn with a generator seeded by ``config.seed``.
        evaluate: ``model -> float`` (e.g. perplexity), run in eval mode every ``eval_every``
            steps and after the last one.
        progress: ``progress(step, train_loss)`` after each step.
    """
    if not any(isinstance(m, FakeQuantLinear) for m in prepared.modules()):
        raise ValueError("prepared has no FakeQuantLinear: call prepare_qat(model, config) "
                         "first, then train what it returns")
    if not prepared.training:
        raise ValueError("prepared is in eval mode: QAT trains it, so call prepared.train() "
                         "first (dropout and the optimizer expect training mode)")
    block = prepared.config.block_size
    if train_ids.ndim != 1 or train_ids.numel() <= block + 1:
        raise ValueError(f"train_ids has shape {tuple(train_ids.shape)}: expected a 1-D tensor "
                         f"of more than block_size + 1 = {block + 1} token ids")
    params = [p for p in prepared.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2]},
                             {"params": [p for p in params if p.dim() < 2]}],
                            lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    history = QATHistory()
    for step in range(config.steps):
        start = time.process_time()
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, config)
        starts = torch.randint(train_ids.numel() - block, (config.batch_size,), generator=gen)
        window = train_ids[starts[:, None] + torch.arange(block + 1)]  # (B, T + 1)
        _, loss = prepared(window[:, :-1], window[:, 1:])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"the training loss is {value} at step {step}: training "
                             f"diverged; lower lr (now {config.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        history.train_cpu_s += time.process_time() - start
        history.step.append(step)
        history.train_loss.append(value)
        if progress is not None:
            progress(step, history.train_loss[-1])
        last = step == config.steps - 1
        if evaluate is not None and (last or (eval_every and (step + 1) % eval_every == 0)):
            prepared.eval()
            history.eval_step.append(step + 1)
            history.eval_value.append(float(evaluate(prepared)))
            prepared.train()
    return history


def convert_qat(prepared: nn.Module, config: QATConfig) -> tuple[nn.Module, QuantReport]:
    """Pack the trained weights (RTN on the trained grid): ``(model, report)``, eval mode."""
    names = [n for n, m in prepared.named_modules() if isinstance(m, FakeQuantLinear)]
    if not names:
        raise ValueError("prepared has no FakeQuantLinear: pass the model prepare_qat returned")
    plain = swap_modules(prepared, names, lambda name, m: _as_linear(m))
    packed, report = quantize_weight_only(
        plain.eval(), replace(config.weight_only(), modules=tuple(names), exclude=()))
    return packed, replace(report, label=config.label, family=config.family)


def _as_linear(module: FakeQuantLinear) -> nn.Linear:
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    linear.load_state_dict(module.state_dict())
    return linear


def save_qat(model: nn.Module, config: QATConfig, path: str | pathlib.Path,
             metrics: dict) -> pathlib.Path:
    """Write a converted QAT model's tensors, its config and ``metrics`` to safetensors."""
    fields = {k: v for k, v in asdict(config).items() if k not in ("exclude", "modules")}
    meta = {"format": "quantbook-qat/1", "config": json.dumps(fields),
            "metrics": json.dumps(metrics)}
    return save_tensors(model.state_dict(), path, meta)


def load_qat(model: nn.Module, path: str | pathlib.Path) -> tuple[nn.Module, QATConfig, dict]:
    """``(packed model, config, metrics)`` from :func:`save_qat`'s file; ``model`` is the float
    GPT it was trained from (it gives the module shapes; its weights are not used)."""
    tensors, meta = load_tensors(path, "run `make qat` to train and write it")
    if meta.get("format") != "quantbook-qat/1":
        raise ValueError(f"{path} is not a QAT checkpoint (format {meta.get('format')!r})")
    config = QATConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in json.loads(meta["config"]).items()})
    packed, _ = quantize_weight_only(model, config.weight_only())
    packed.load_state_dict(tensors)
    return packed.eval(), config, json.loads(meta["metrics"])
