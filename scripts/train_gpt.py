"""Train the book's small character-level GPT on the Lee corpus and write its checkpoint.

Writes ``src/quantbook/checkpoints/gpt_lee.safetensors`` (weights, config, vocabulary, metrics)
and ``gpt_lee.json`` beside it (metrics, baseline, configs, timing). ``make checkpoint`` runs it;
it takes about 4 minutes on 2 CPU cores.

    python scripts/train_gpt.py [--steps N] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import torch

from quantbook.data import lee_split
from quantbook.gpt import (
    CharTokenizer,
    GPTConfig,
    perplexity,
    sample,
    save_checkpoint,
    unigram_baseline,
)
from quantbook.train import TrainConfig, train

SEED = 1234
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "src" / "quantbook" / "checkpoints"
EVAL_BATCH_SIZE = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TrainConfig().steps)
    parser.add_argument("--out-dir", type=pathlib.Path, default=OUT_DIR)
    args = parser.parse_args()

    split = lee_split()
    vocab_size = CharTokenizer.from_text(split.train).vocab_size
    gpt_config = GPTConfig(vocab_size=vocab_size, block_size=128, n_layer=4, n_head=4, n_embd=128)
    train_config = TrainConfig(steps=args.steps, warmup=min(TrainConfig().warmup, args.steps))

    def progress(step: int, logs: dict) -> None:
        val = f"{logs['val_loss']:.4f}" if logs["val_loss"] is not None else "-"
        print(f"step {step + 1:5d}  train {logs['train_loss']:.4f}  val {val}  "
              f"lr {logs['lr']:.2e}  {logs['elapsed_s']:.0f} s", flush=True)

    model, tokenizer, history = train(gpt_config, train_config, SEED, split=split,
                                      progress=progress)
    train_ids = tokenizer.encode(split.train)
    val_ids = tokenizer.encode(split.validation)
    with torch.inference_mode():
        val = perplexity(model, val_ids, gpt_config.block_size, batch_size=EVAL_BATCH_SIZE)
    unigram = unigram_baseline(train_ids, val_ids, tokenizer.vocab_size)
    metrics = {f"val_{k}": v for k, v in val.items()}
    metrics |= {f"unigram_{k}": v for k, v in unigram.items() if k != "n_tokens"}
    metrics |= {"eval_block_size": gpt_config.block_size, "eval_batch_size": EVAL_BATCH_SIZE}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights = save_checkpoint(model, tokenizer, args.out_dir / "gpt_lee.safetensors", metrics,
                              seed=SEED)
    text = sample(model, tokenizer, "The Prime Minister", 200, seed=0)
    report = {
        "metrics": metrics,
        "train_seconds": round(history.train_seconds, 1),
        "num_params": model.num_params(),
        "checkpoint_size_bytes": weights.stat().st_size,
        "gpt_config": dataclasses.asdict(gpt_config),
        "train_config": dataclasses.asdict(train_config),
        "seed": SEED,
        "torch_version": torch.__version__,
        "history": {"eval_step": history.eval_step, "val_loss": history.val_loss},
        "sample": text,
    }
    (args.out_dir / "gpt_lee.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("metrics", "train_seconds", "num_params",
                                             "checkpoint_size_bytes")}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
