"""The book's two workloads: the GPT trained here and MiniLM, each with its metric and timed call.

Every chapter that compares methods, and ``make bench``, measure on these, so each chapter's
float baseline is the same: the GPT's validation perplexity, and MiniLM's Lee Pearson with the
embeddings' cosine to float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from quantbook.sweep import Workload


def minilm_quality(model: nn.Module, tokenizer) -> Callable[[nn.Module], dict[str, float]]:
    """``m -> {"lee_pearson", "cosine_mean"}``: Lee Pearson, mean cosine to ``model``'s embeddings.

    The float embeddings come from the first call, so a sweep evaluates the float model once.
    """
    from quantbook import evaluate

    reference = {}

    def quality(m: nn.Module) -> dict[str, float]:
        if not reference:
            reference.update(evaluate.evaluate_minilm(model, tokenizer))
        result = reference if m is model else evaluate.evaluate_minilm(m, tokenizer)
        cosine = evaluate.embedding_cosine(reference["embeddings"], result["embeddings"])
        return {"lee_pearson": result["pearson"], "cosine_mean": cosine["mean"]}

    return quality


def gpt_workload(latency_windows: int = 8) -> Workload:
    """The trained GPT: validation perplexity; latency of a batch of ``latency_windows`` windows."""
    from quantbook import data, gpt

    model, tokenizer, _ = gpt.load_gpt()
    block = model.config.block_size
    val_ids = torch.tensor(tokenizer.encode(data.lee_split().validation), dtype=torch.long)
    batch = val_ids[: latency_windows * block].view(latency_windows, block)  # (B, T)
    return Workload(
        name="gpt", model=model, metric="perplexity",
        evaluate=lambda m: gpt.perplexity(m, val_ids, block)["perplexity"],
        run=lambda m: m(batch),
        calibration=data.gpt_calibration_batches(tokenizer, block, n_batches=8),
        linear_targets=("attention", "ffn", "head"), timed_inputs=[batch],
    )


def minilm_workload(timed_articles: int | None = None) -> Workload:
    """MiniLM: Lee Pearson (and embedding cosine) on the 50 Lee documents; latency of encoding
    the first ``timed_articles`` of them in batches of 16 (``None``: all 50)."""
    from quantbook import data, minilm

    model, tokenizer = minilm.load_minilm()
    docs = data.lee_documents()
    if timed_articles is not None and (isinstance(timed_articles, bool)
                                       or not isinstance(timed_articles, int)
                                       or not 1 <= timed_articles <= len(docs)):
        raise ValueError(f"timed_articles={timed_articles!r} is not supported: choose an "
                         f"integer from 1 to {len(docs)}, or None for all of them")
    timed = docs[:timed_articles]

    batches = [
        dict(tokenizer(timed[i : i + 16], padding=True, truncation=True,
                       max_length=minilm.max_seq_length(), return_tensors="pt"))
        for i in range(0, len(timed), 16)
    ]

    def run(m: nn.Module) -> None:
        for batch in batches:
            m(**batch)

    return Workload(
        name="minilm", model=model, metric="lee_pearson",
        evaluate=minilm_quality(model, tokenizer), run=run,
        calibration=data.minilm_calibration_batches(tokenizer, n_batches=8),
        linear_targets=("attention", "ffn"), timed_inputs=batches,
    )
