"""Quantization-aware training of the book's GPT; writes src/quantbook/checkpoints/gpt_qat_*.

    python scripts/train_qat.py [--bits 2] [--group-size 32] [--steps 120]

Fine-tunes the GPT through fake-quantized weights (quantbook.methods.qat), packs it, scores
float, RTN and QAT on the full validation text, and stores the packed model (a few hundred KB)
with those numbers. One torch thread, so the run is deterministic; about 90 CPU seconds for
120 steps on an AVX2 core.
"""

import argparse
import pathlib
import time

import torch

from quantbook import data, gpt
from quantbook.methods.qat import QATConfig, convert_qat, prepare_qat, save_qat, train_qat
from quantbook.methods.weight_only import quantize_weight_only

CHECKPOINTS = pathlib.Path(__file__).resolve().parent.parent / "src/quantbook/checkpoints"
TARGETS = ("attention", "ffn", "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall0 = time.perf_counter()
    model, tokenizer, _ = gpt.load_gpt()
    block = model.config.block_size
    split = data.lee_split()
    train_ids = torch.tensor(tokenizer.encode(split.train), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(split.validation), dtype=torch.long)

    def ppl(m, n_tokens=None):
        ids = val_ids if n_tokens is None else val_ids[: n_tokens + 1]
        return gpt.perplexity(m, ids, block)["perplexity"]

    config = QATConfig(bits=args.bits, group_size=args.group_size, steps=args.steps,
                       targets=TARGETS)
    rtn, _ = quantize_weight_only(model, config.weight_only())
    prepared, _ = prepare_qat(model, config)
    history = train_qat(prepared, train_ids, config, evaluate=lambda m: ppl(m, 8192),
                        eval_every=max(args.steps // 4, 1),
                        progress=lambda s, loss: print(f"step {s + 1} ce {loss:.4f}",
                                                       flush=True) if (s + 1) % 10 == 0 else None)
    packed, report = convert_qat(prepared, config)
    metrics = {"steps": args.steps, "ppl_float": ppl(model), "ppl_rtn": ppl(rtn),
               "ppl_qat": ppl(packed), "ppl_rtn_8k": ppl(rtn, 8192),
               "train_loss": [round(v, 4) for v in history.train_loss],
               "eval_step": history.eval_step, "eval_ppl_8k": history.eval_value,
               "train_cpu_s": round(history.train_cpu_s, 1),
               "wall_s": round(time.perf_counter() - wall0, 1), "converted": len(report.converted)}
    name = f"gpt_qat_int{args.bits}_g{args.group_size}.safetensors"
    path = save_qat(packed, config, CHECKPOINTS / name, metrics)
    gap = metrics["ppl_rtn"] - metrics["ppl_float"]
    print(f"{path.name}: {path.stat().st_size} bytes; perplexity float {metrics['ppl_float']:.3f}"
          f" RTN {metrics['ppl_rtn']:.3f} QAT {metrics['ppl_qat']:.3f}; QAT recovers "
          f"{(metrics['ppl_rtn'] - metrics['ppl_qat']) / gap:.1%} of RTN's gap; "
          f"{metrics['train_cpu_s']} CPU s of training")


if __name__ == "__main__":
    main()
