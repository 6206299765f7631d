"""Train the small GPT of :mod:`quantbook.gpt` on the Lee corpus, deterministically, on 2 cores."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from quantbook.data import TextSplit, lee_split
from quantbook.gpt import GPT, GPTConfig, perplexity
from quantbook.measure import num_threads
from quantbook.tokenizer import CharTokenizer


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1800  # about 4 minutes on 2 CPU cores with the book's GPTConfig
    batch_size: int = 16  # on 2 CPU cores 16 x 128 tokens runs faster per token than 32 x 128
    lr: float = 2e-3  # peak learning rate, reached after `warmup` steps
    min_lr: float = 2e-4  # the cosine schedule decays to this at the last step
    warmup: int = 100
    weight_decay: float = 0.1  # applied to matrices (Linear and Embedding weights) only
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # steps between validation evaluations; 0 disables them
    eval_tokens: int = 8192  # validation tokens scored at each evaluation (a fixed prefix)
    num_threads: int = 2  # fixed so that results do not depend on the machine

    def __post_init__(self):
        for name in ("steps", "batch_size", "num_threads", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup={self.warmup!r}: expected 0..steps={self.steps}")


@dataclass
class TrainHistory:
    """Losses in nats per token; ``val_loss`` is scored on ``eval_tokens`` validation tokens."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of the whole run, evaluations included


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr``.

    Example: with ``lr=1e-3, min_lr=1e-4, warmup=10, steps=111`` the rate is 1e-4 at step 0,
    1e-3 at steps 9 and 10, 5.5e-4 halfway through the decay (step 60) and 1e-4 at step 110.
    """
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(config.steps - 1 - config.warmup, 1)
    progress = min((step - config.warmup) / span, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and LayerNorm weights
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def train(gpt_config: GPTConfig, train_config: TrainConfig, seed: int, *,
          split: TextSplit | None = None,
          progress: Callable[[int, dict], None] | None = None,
          ) -> tuple[GPT, CharTokenizer, TrainHistory]:
    """Train a GPT from scratch on ``split`` (default :func:`quantbook.data.lee_split`).

    The same arguments give bit-identical weights: the seed fixes initialisation, dropout and
    batch sampling, and the thread count is fixed (and restored afterwards). The global RNG
    state is restored too, so calling this leaves the caller's randomness untouched.

    Args:
        gpt_config: model shape; ``vocab_size`` must equal the tokenizer's, i.e.
            ``CharTokenizer.from_text(split.train).vocab_size``.
        train_config: optimisation settings.
        seed: the one seed of the run.
        split: training and validation text.
        progress: called as ``progress(step, logs)`` at each evaluation and at the end, with
            ``logs`` holding ``train_loss``, ``val_loss`` (or None), ``lr`` and ``elapsed_s``.

    Returns:
        ``(model, tokenizer, history)`` with the model in eval mode.
    """
    split = split if split is not None else lee_split()
    tokenizer = CharTokenizer.from_text(split.train)
    if gpt_config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"gpt_config.vocab_size={gpt_config.vocab_size} but the training text "
                         f"has {tokenizer.vocab_size} tokens: set "
                         "vocab_size=CharTokenizer.from_text(split.train).vocab_size")
    train_ids = torch.tensor(tokenizer.encode(split.train))
    val_ids = torch.tensor(tokenizer.encode(split.validation))[: train_config.eval_tokens + 1]
    T, B = gpt_config.block_size, train_config.batch_size
    if train_ids.numel() <= T:
        raise ValueError(f"the training text has {train_ids.numel()} tokens: expected more than "
                         f"block_size={T}")
    history = TrainHistory()
    start = time.perf_counter()
    with num_threads(train_config.num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(gpt_config)
        model.train()
        optimizer = _optimizer(model, train_config)
        batches = torch.Generator().manual_seed(seed + 1)
        for step in range(train_config.steps):
            lr = learning_rate(step, train_config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            starts = torch.randint(train_ids.numel() - T, (B,), generator=batches)  # (B,)
            offsets = starts[:, None] + torch.arange(T + 1)  # (B, T + 1)
            window = train_ids[offsets]  # (B, T + 1)
            _, loss = model(window[:, :-1], window[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            history.step.append(step)
            history.train_loss.append(loss.item())
            history.lr.append(lr)
            last = step == train_config.steps - 1
            interval = train_config.eval_interval
            val_loss = None
            if val_ids.numel() > 1 and interval and ((step + 1) % interval == 0 or last):
                val_loss = perplexity(model, val_ids, T)["loss_nats"]
                model.train()
                history.eval_step.append(step)
                history.val_loss.append(val_loss)
            if progress is not None and (val_loss is not None or last):
                progress(step, {"train_loss": loss.item(), "val_loss": val_loss, "lr": lr,
                                "elapsed_s": time.perf_counter() - start})
    history.train_seconds = time.perf_counter() - start
    model.eval()
    return model, tokenizer, history
