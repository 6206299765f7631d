"""Where do a transformer's bytes and multiply-accumulates live? A per-group ledger.

Quantizing a group shrinks its bytes and speeds up its multiply-accumulates (MACs), so before
choosing ``targets`` it pays to know each group's share of both. Per token, for sequence length T:

- a Linear layer costs ``in_features * out_features`` MACs (one per weight);
- an embedding lookup costs 0 MACs: it copies a row, whatever the table's size;
- each attention layer also multiplies activations by activations: scores ``q @ k^T`` and the
  weighted sum ``att @ v`` cost ``T * d`` MACs each per token (d = model width), ``2 * T * d`` per
  layer. They have no weights, so weight quantization cannot touch them; they are reported as
  their own row, ``"attention matmuls"``. (Both models compute the full T x T scores - the GPT
  masks them afterwards - so no causal halving is applied.)

Norms, biases-only modules and anything else with parameters land in ``"norms/other"``;
element-wise work there (LayerNorm, GELU, softmax, bias adds) is not counted as MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantbook.targets import GROUP_TYPES, GROUPS, list_targets

ATTENTION_MATMULS = "attention matmuls"
OTHER = "norms/other"
ROWS = ("embeddings", "attention", ATTENTION_MATMULS, "ffn", "head", OTHER)
# names of the query projection, whose output width is the attention's d
_QUERY_SUFFIXES = (".q_proj", ".self.query")


@dataclass(frozen=True)
class GroupCost:
    """Parameters, float32 bytes and per-token MACs of one module group."""

    group: str
    n_params: int
    float32_bytes: int  # 4 * n_params: the float model's storage, whatever the current dtype
    macs_per_token: int  # multiply-accumulates per token at the given seq_len
    param_share: float  # n_params / all parameters of the model
    mac_share: float  # macs_per_token / all MACs per token


def group_accounting(model: nn.Module, seq_len: int) -> list[GroupCost]:
    """Tabulate parameters, bytes and MACs per token by group for the GPT or MiniLM.

    Args:
        model: the float model (quantbook's GPT or MiniLM's ``BertModel``), before quantization.
        seq_len: tokens per sequence T; only the attention matmuls depend on it.

    Returns:
        One :class:`GroupCost` per row of :data:`ROWS`, in that order (rows may be zero, e.g.
        MiniLM's ``head``). Parameters shared between modules are counted once.

    Raises:
        TypeError: a group's module is no longer the float ``nn.Linear`` / ``nn.Embedding`` (a
            quantized copy), whose parameters and MACs this ledger cannot count.

    Example: a GPT with n_layer=1, n_embd=8, vocab 11, T=4 has attention 4 * 8 * 8 = 256 MACs,
    attention matmuls 2 * 4 * 8 = 64, ffn 2 * 8 * 32 = 512, head 8 * 11 = 88 per token.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} is not supported: choose an integer >= 1")
    targets = list_targets(model)  # also rejects unsupported models
    modules = dict(model.named_modules())

    group_of_param: dict[str, str] = {}
    macs = dict.fromkeys(ROWS, 0)
    for group in GROUPS:
        kind = GROUP_TYPES[group]
        for name in targets[group]:
            module = modules[name]
            if not isinstance(module, kind):
                found = f"{type(module).__module__}.{type(module).__qualname__}"
                raise TypeError(
                    f"model.{name} is a {found}, not an nn.{kind.__name__}: "
                    "group_accounting counts the float model; pass it before quantization"
                )
            for param_name, _ in module.named_parameters(prefix=name):
                group_of_param[param_name] = group
            if isinstance(module, nn.Linear):
                macs[group] += module.in_features * module.out_features
    for name in targets["attention"]:
        if name.endswith(_QUERY_SUFFIXES):  # one per layer
            macs[ATTENTION_MATMULS] += 2 * seq_len * modules[name].out_features

    n_params = dict.fromkeys(ROWS, 0)
    for param_name, param in model.named_parameters():  # deduplicates shared parameters
        n_params[group_of_param.get(param_name, OTHER)] += param.numel()

    total_params = sum(n_params.values())
    total_macs = sum(macs.values())
    return [
        GroupCost(
            group=row,
            n_params=n_params[row],
            float32_bytes=4 * n_params[row],
            macs_per_token=macs[row],
            param_share=n_params[row] / total_params if total_params else 0.0,
            mac_share=macs[row] / total_macs if total_macs else 0.0,
        )
        for row in ROWS
    ]
