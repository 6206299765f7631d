"""Checks at the boundary: a model and its calibration batches, refused early with the fix.

Every quantization method calls :func:`check_model` before it copies anything, and every method
that calibrates calls :func:`check_batches`. Each check turns a failure that PyTorch would
report many frames deep - or not at all, as a NaN model or a model that quantized nothing -
into one message that names the argument, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantbook.targets import model_family


def check_model(model: object, label: str, *, devices: Iterable[str] = ("cpu",)) -> None:
    """Refuse a model that no method can quantize correctly.

    Args:
        model: the float model handed to a method.
        label: the method's label, for the messages.
        devices: device types the method runs on (the eager ``torch.ao`` kernels: CPU only).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a tensor lives on the meta device or on a device the method cannot use, a
            parameter is already a quantized tensor, a floating-point parameter is not
            float32, or a parameter holds NaN or inf.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}: expected a torch.nn.Module "
                        "(pass the model itself, not its state_dict or its output)")
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    on = {t.device.type for t in tensors.values()}
    if "meta" in on:
        raise ValueError(
            f"{label}: the model has tensors on the meta device (shapes without data); load "
            "its weights first, e.g. model.to_empty(device='cpu') then "
            "model.load_state_dict(state_dict)")
    wrong = sorted(on - set(devices))
    if wrong:
        cpu_hint = ("quantize model.cpu(); on a GPU use a torchao method "
                    "(quantize_torchao_dynamic)" if tuple(devices) == ("cpu",)
                    else f"move it to one of {tuple(devices)}")
        raise ValueError(f"{label}: the model has tensors on {', '.join(wrong)}, but this "
                         f"method runs on {', '.join(devices)} only: {cpu_hint}")
    for name, param in model.named_parameters():
        if type(param) not in (torch.Tensor, nn.Parameter):
            raise ValueError(
                f"{label}: parameter {name!r} is a {type(param).__name__}, so this model is "
                "already quantized (by torchao): quantize the float model, not a quantized "
                "copy (keep a reference to the float model, or reload it)")
        if param.is_floating_point() and param.dtype != torch.float32:
            raise ValueError(
                f"{label}: parameter {name!r} is {param.dtype}, and quantization starts from "
                "float32 weights (scales computed in half precision are off, and the eager "
                "kernels refuse half inputs at every call): call model.float() first")
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            n_bad = int((~torch.isfinite(param)).sum())
            raise ValueError(
                f"{label}: parameter {name!r} holds {n_bad} NaN or inf values, which would "
                "turn every output into NaN after quantization: find where they came from "
                "(a diverged training run, a bad checkpoint) and load finite weights")


def _limits(model: nn.Module) -> tuple[str, int, int] | None:
    """``(family, vocab_size, longest sequence)`` of quantbook's GPT or a BERT, else ``None``."""
    try:
        family = model_family(model)
    except TypeError:
        return None
    config = model.config
    if family == "gpt":
        return family, config.vocab_size, config.block_size
    return family, config.vocab_size, config.max_position_embeddings


def _token_ids(batch: object, index: int) -> torch.Tensor:
    """The ``(B, T)`` token ids of one batch: a tensor, or a tokenizer dict's ``input_ids``."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    if not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"batches[{index}] is a {type(batch).__name__}: expected a LongTensor of token ids "
            "(B, T), or a tokenizer's output (a dict with 'input_ids'), e.g. from "
            "quantbook.data.minilm_calibration_batches(tokenizer)")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"batches[{index}] holds {ids.dtype} token ids: expected integers "
                        "(torch.long); token ids are indices, not features")
    if ids.ndim != 2 or ids.numel() == 0:
        raise ValueError(f"batches[{index}] has shape {tuple(ids.shape)}: expected a non-empty "
                         "(batch, tokens) matrix; add the batch dimension with ids[None]")
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"batches[{index}]['attention_mask'] has shape {tuple(mask.shape)} but "
                         f"'input_ids' has {tuple(ids.shape)}: tokenize the batch in one call")
    return ids


def check_batches(model: nn.Module, batches: object, name: str = "batches") -> list:
    """Check calibration batches against the model that will run them; return them as a list.

    For quantbook's GPT and MiniLM, batches must be token ids (a BERT's as its tokenizer's
    dicts), in ``[0, vocab_size)``, and sequences must fit the model's positions; for other
    models only the list itself is checked (their ``run_fn`` knows what a batch is).

    Raises:
        ValueError: no batches, a batch of the wrong shape, ids out of range, too long.
        TypeError: a batch is not token ids (floats, a string, a list).
    """
    if isinstance(batches, torch.Tensor | dict | str):
        raise TypeError(f"{name} is a single {type(batches).__name__}: pass a list of batches, "
                        f"e.g. [{name}]")
    try:
        batches = list(batches)
    except TypeError:
        raise TypeError(f"{name} is a {type(batches).__name__}: pass a list of batches") from None
    if not batches:
        raise ValueError(f"{name} is empty: calibration needs at least one batch, e.g. "
                         "quantbook.data.minilm_calibration_batches(tokenizer) or "
                         "gpt_calibration_batches(tokenizer, block_size)")
    limits = _limits(model)
    if limits is None:  # another model: its batches may be anything its run_fn understands
        return batches
    for index, batch in enumerate(batches):
        ids = _token_ids(batch, index)
        family, vocab, length = limits
        if family == "bert" and not isinstance(batch, dict):
            raise TypeError(
                f"{name}[{index}] is a bare {type(batch).__name__} of token ids: a BERT "
                "calibrates on its tokenizer's output (input_ids with attention_mask, [CLS] "
                "first), e.g. quantbook.data.minilm_calibration_batches(tokenizer)")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"{name}[{index}] holds token ids {low}..{high}, outside the "
                             f"model's vocabulary 0..{vocab - 1}: tokenize with this model's "
                             "own tokenizer")
        if ids.shape[1] > length:
            raise ValueError(f"{name}[{index}] has {ids.shape[1]} tokens per sequence, more "
                             f"than the model's {length} positions: truncate (tokenizer(..., "
                             f"truncation=True, max_length={length}))")
    return batches
