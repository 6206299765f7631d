"""Name the parts of a model to quantize: ``targets=["attention", "ffn"]``.

A reader picks module *groups* by meaning; :func:`resolve_targets` turns them into the fully
qualified module names that quantization APIs take (``filter_fn`` in torchao, ``qconfig_spec``
in ``torch.ao``). Two model families are known, recognised by their attribute layout rather than
their class name (``*`` is the layer number):

- quantbook's GPT: ``attention`` = ``blocks.*.attn.{q,k,v,out}_proj``; ``ffn`` =
  ``blocks.*.mlp.{fc_in,fc_out}``; ``embeddings`` = ``tok_emb``, ``pos_emb``; ``head`` =
  ``lm_head``.
- MiniLM (a transformers ``BertModel``): ``attention`` =
  ``encoder.layer.*.attention.self.{query,key,value}`` and
  ``encoder.layer.*.attention.output.dense``;
  ``ffn`` = ``encoder.layer.*.intermediate.dense`` and ``encoder.layer.*.output.dense`` (the
  layer's own, not the attention's); ``embeddings`` =
  ``embeddings.{word,position,token_type}_embeddings``; ``head``: none, sentence embeddings are
  mean-pooled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

GROUPS = ("attention", "ffn", "embeddings", "head")
# group -> the module type its members have in the float model
GROUP_TYPES: dict[str, type[nn.Module]] = {
    "attention": nn.Linear,
    "ffn": nn.Linear,
    "embeddings": nn.Embedding,
    "head": nn.Linear,
}
# family -> group -> regular expression matched against the whole module name (None: no such part)
_PATTERNS: dict[str, dict[str, str | None]] = {
    "gpt": {
        "attention": r"blocks\.\d+\.attn\.(q_proj|k_proj|v_proj|out_proj)",
        "ffn": r"blocks\.\d+\.mlp\.(fc_in|fc_out)",
        "embeddings": r"tok_emb|pos_emb",
        "head": r"lm_head",
    },
    "bert": {
        "attention": r"encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)",
        "ffn": r"encoder\.layer\.\d+\.(intermediate\.dense|output\.dense)",
        "embeddings": r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)",
        "head": None,
    },
}
_NO_GROUP_REASON = {
    ("bert", "head"): (
        "MiniLM has no output head: a sentence embedding is the mean of the encoder's last "
        "hidden states over the tokens (mean pooling), which has no weights"
    ),
}


def model_family(model: nn.Module) -> str:
    """Recognise the model by its layout: ``"gpt"`` (quantbook's GPT) or ``"bert"`` (MiniLM).

    Raises:
        TypeError: for any other model.
    """
    if all(hasattr(model, name) for name in ("tok_emb", "pos_emb", "blocks", "lm_head")):
        return "gpt"
    embeddings = getattr(model, "embeddings", None)
    encoder = getattr(model, "encoder", None)
    if hasattr(embeddings, "word_embeddings") and hasattr(encoder, "layer"):
        return "bert"
    hint = ""
    if hasattr(model, "bert"):
        hint = " (for a BERT task model, pass its .bert)"
    elif hasattr(next(iter(model.children()), None), "auto_model"):
        hint = " (for a SentenceTransformer, pass model[0].auto_model)"
    raise TypeError(
        f"model is a {type(model).__name__}, which quantbook cannot map to module groups: "
        f"expected quantbook's GPT or a transformers BertModel such as load_minilm()'s{hint}"
    )


def check_groups(groups: str | Iterable[str], name: str = "groups") -> list[str]:
    """Validate group names; return them as a list without repeats (a string is one group).

    ``name`` is the argument or field the groups came from, for the messages (``"targets"``).
    """
    original = groups
    if isinstance(groups, str):
        groups = [groups]  # a single group name is accepted as a one-element list
    try:
        groups = list(groups)
    except TypeError:
        raise TypeError(
            f"{name}={original!r} is not supported: pass a tuple of group names such as "
            "('attention', 'ffn')"
        ) from None
    if not groups:
        raise ValueError(f"{name}={original!r} is empty: choose at least one of "
                         f"{', '.join(GROUPS)}")
    for group in groups:
        if not isinstance(group, str):
            raise TypeError(
                f"{name}={original!r} holds a {type(group).__name__}: expected group names "
                f"(str), choose from {', '.join(GROUPS)}"
            )
        if group not in GROUPS:
            hint = (f"; {group!r} looks like a module name: pass modules=({group!r},) to "
                    "quantize named modules" if "." in group else "")
            raise ValueError(
                f"{name}={original!r} names an unknown group {group!r}: "
                f"choose from {', '.join(GROUPS)}{hint}"
            )
    return list(dict.fromkeys(groups))  # drop repeats, keep order


def _matches(model: nn.Module, family: str, group: str) -> list[str]:
    """Names of the group's modules, matched by name only: a quantized module keeps its place
    (and its name), so that the methods can tell "already quantized" from "absent"."""
    pattern = _PATTERNS[family][group]
    if pattern is None:
        return []
    return [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]


def list_targets(model: nn.Module) -> dict[str, list[str]]:
    """Map every group of :data:`GROUPS` to its module names in ``model`` (possibly empty)."""
    family = model_family(model)
    return {group: _matches(model, family, group) for group in GROUPS}


def resolve_targets(model: nn.Module, groups: str | Iterable[str]) -> dict[str, list[str]]:
    """Map each requested group to the fully qualified names of its modules in ``model``.

    Args:
        model: quantbook's GPT or MiniLM's ``BertModel``. Members are found by name, so a
            quantized copy lists its quantized modules in their places.
        groups: group names from :data:`GROUPS`, e.g. ``["attention", "ffn"]``. A single
            string is accepted as one group.

    Returns:
        group -> module names in model order, e.g. ``{"head": ["lm_head"]}``.

    Raises:
        ValueError: an unknown group, an empty list, or a group with no module in this model.
        TypeError: ``groups`` is not a string or a list of strings, or the model is unsupported.
    """
    wanted = check_groups(groups)
    family = model_family(model)
    resolved = {}
    for group in wanted:
        names = _matches(model, family, group)
        if not names:
            reason = _NO_GROUP_REASON.get((family, group)) or (
                f"no module of this {type(model).__name__} is named like "
                f"{_PATTERNS[family][group]!r}"
            )
            available = [g for g in GROUPS if _matches(model, family, g)]
            raise ValueError(
                f"group {group!r} matches no module of this model: {reason}; "
                f"choose from {', '.join(available) or 'nothing'}"
            )
        resolved[group] = names
    return resolved
