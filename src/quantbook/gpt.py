"""A small character-level GPT, written from scratch to be quantized (nanoGPT in spirit).

Every projection is a plain ``nn.Linear`` with its own name, so each quantization API reaches it:
``blocks[i].attn.{q_proj,k_proj,v_proj,out_proj}``, ``blocks[i].mlp.{fc_in,fc_out}`` and
``lm_head``. Attention is spelled out (matmul, causal mask, softmax), so the graph is plain ops.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantbook.checkpoint import load_tensors, save_tensors
from quantbook.tokenizer import CharTokenizer

DEFAULT_CHECKPOINT = pathlib.Path(__file__).parent / "checkpoints" / "gpt_lee.safetensors"
FORMAT = "quantbook-gpt/1"


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the model; the book's checkpoint uses 4 layers, 4 heads, 128 dims, 128 tokens."""

    vocab_size: int
    block_size: int  # longest context, in tokens
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                             "choose n_embd as a multiple of n_head")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask, persistent=False)  # (block, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hd = C // self.n_head
        q = self.q_proj(x).view(B, T, self.n_head, hd).transpose(1, 2)  # (B, heads, T, hd)
        k = self.k_proj(x).view(B, T, self.n_head, hd).transpose(1, 2)  # (B, heads, T, hd)
        v = self.v_proj(x).view(B, T, self.n_head, hd).transpose(1, 2)  # (B, heads, T, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, heads, T, T)
        att = att.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = att @ v  # (B, heads, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.out_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.fc_out = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.gelu(self.fc_in(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` pre-LayerNorm blocks, final LayerNorm, lm_head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        # NOT tied to tok_emb (nanoGPT ties them): with one shared tensor, quantizing the
        # Linear layers would silently quantize the embedding too, and vice versa.
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale down residual projections
            if name.endswith(("out_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Return ``(logits, loss)``: logits (B, T, vocab); mean cross-entropy in nats or None."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.config.block_size}: "
                             "crop the input to the last block_size tokens")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss


@torch.no_grad()
def sample(model: GPT, tokenizer: CharTokenizer, prompt: str, max_new_tokens: int,
           temperature: float = 0.8, top_k: int | None = 20, seed: int = 0) -> str:
    """Continue ``prompt`` by sampling; the same seed gives the same text.

    Returns:
        ``prompt`` followed by ``max_new_tokens`` sampled characters.
    """
    if not prompt:
        raise ValueError("prompt='' is empty: give at least one character, e.g. 'The '")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected 0 or more")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r}: expected a positive number such as 0.8")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k!r}: expected a positive integer or None")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([tokenizer.encode(prompt)])  # (1, T)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        logits = logits[0, -1] / temperature  # (vocab,)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, next_id.view(1, 1)], dim=1)
    model.train(was_training)
    return prompt + tokenizer.decode(idx[0, -max_new_tokens:] if max_new_tokens else [])


def _metrics(total_nats: float, n_tokens: int) -> dict:
    loss = total_nats / n_tokens
    return {"loss_nats": loss, "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2), "n_tokens": n_tokens}


@torch.no_grad()
def perplexity(model: GPT, text_ids: Sequence[int] | torch.Tensor, block_size: int,
               batch_size: int = 32) -> dict:
    """Score a text with non-overlapping windows.

    Window w feeds tokens ``[w*T, (w+1)*T)`` and predicts ``[w*T+1, (w+1)*T+1)``, with
    ``T = block_size`` (the last window may be shorter). So every token but the first is
    predicted exactly once, from the tokens before it in its window (between 1 and T of them).
    ``loss_nats`` is the mean negative log-likelihood over those ``n_tokens = len(text_ids) - 1``
    predictions; ``perplexity = exp(loss_nats)``; ``bits_per_token = loss_nats / ln 2``.

    Returns:
        ``{"loss_nats", "perplexity", "bits_per_token", "n_tokens"}``.
    """
    ids = torch.as_tensor(text_ids, dtype=torch.long).flatten()
    if not 1 <= block_size <= model.config.block_size:
        raise ValueError(f"block_size={block_size} is out of range: expected 1.."
                         f"{model.config.block_size} (the model's block_size)")
    if ids.numel() < 2:
        raise ValueError(f"text_ids has {ids.numel()} tokens: expected at least 2")
    was_training = model.training
    model.eval()
    n_full = (ids.numel() - 1) // block_size
    x = ids[: n_full * block_size].view(n_full, block_size)  # (windows, T)
    y = ids[1 : n_full * block_size + 1].view(n_full, block_size)  # (windows, T)
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    if ids.numel() - 1 > n_full * block_size:  # the shorter last window
        batches.append((ids[n_full * block_size : -1][None], ids[n_full * block_size + 1 :][None]))
    total = 0.0
    for xb, yb in batches:
        logits, _ = model(xb)
        nll = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum")
        total += nll.double().item()
    model.train(was_training)
    return _metrics(total, ids.numel() - 1)


def unigram_baseline(train_ids: Sequence[int] | torch.Tensor,
                     val_ids: Sequence[int] | torch.Tensor, vocab_size: int) -> dict:
    """Score ``val_ids`` with add-one smoothed character frequencies counted on ``train_ids``.

    Scores the same targets as :func:`perplexity` (every token but the first), so the two are
    directly comparable. Returns the same keys as :func:`perplexity`.
    """
    counts = torch.bincount(torch.as_tensor(train_ids).flatten(), minlength=vocab_size)
    log_p = torch.log((counts.double() + 1) / (counts.sum() + vocab_size))  # (vocab,)
    targets = torch.as_tensor(val_ids).flatten()[1:]
    return _metrics(-log_p[targets].sum().item(), targets.numel())


def save_checkpoint(model: GPT, tokenizer: CharTokenizer, path: str | pathlib.Path,
                    metrics: dict, *, seed: int | None = None) -> pathlib.Path:
    """Write the weights and everything needed to rebuild the model to one safetensors file.

    The write is atomic (:func:`quantbook.checkpoint.save_tensors`).

    The metadata holds ``config`` (JSON), ``vocab`` (JSON list of characters), ``metrics``
    (JSON), ``seed`` and ``torch_version``.
    """
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size={model.config.vocab_size}: save the tokenizer it was "
                         "trained with")
    metadata = {"format": FORMAT, "config": json.dumps(asdict(model.config)),
                "vocab": json.dumps(tokenizer.chars), "metrics": json.dumps(metrics),
                "seed": json.dumps(seed), "torch_version": torch.__version__}
    return save_tensors(model.state_dict(), path, metadata)


def load_gpt(path: str | pathlib.Path | None = None) -> tuple[GPT, CharTokenizer, dict]:
    """Load a checkpoint (by default the committed ``gpt_lee.safetensors``) in eval mode.

    Returns:
        ``(model, tokenizer, meta)``; meta has ``config``, ``metrics``, ``seed``,
        ``torch_version`` and ``path``.

    Raises:
        ValueError: the tensors do not match the stored config (missing or unexpected keys,
            wrong shapes) - rebuild the checkpoint with ``make checkpoint``.
    """
    path = pathlib.Path(path) if path is not None else DEFAULT_CHECKPOINT
    fix = "rebuild it with `make checkpoint`"
    tensors, raw = load_tensors(path, fix)
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format={raw.get('format')!r}): "
                         f"{fix}")
    config = GPTConfig(**json.loads(raw["config"]))
    tokenizer = CharTokenizer(json.loads(raw["vocab"]))
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"checkpoint {path} stores {tokenizer.vocab_size} vocabulary entries "
                         f"but its config has vocab_size={config.vocab_size}: {fix}")
    model = GPT(config)
    expected = model.state_dict()
    problems = []
    if missing := sorted(set(expected) - set(tensors)):
        problems.append(f"missing keys {missing}")
    if unexpected := sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected keys {unexpected}")
    problems += [f"shape mismatch for {k}: checkpoint {tuple(tensors[k].shape)}, config "
                 f"expects {tuple(v.shape)}" for k, v in expected.items()
                 if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise ValueError(f"checkpoint {path} does not match its config: "
                         f"{'; '.join(problems)}: {fix}")
    model.load_state_dict(tensors)
    model.eval()
    meta = {"config": asdict(config), "metrics": json.loads(raw["metrics"]),
            "seed": json.loads(raw["seed"]), "torch_version": raw["torch_version"], "path": path}
    return model, tokenizer, meta
