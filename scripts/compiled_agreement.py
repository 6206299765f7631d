"""Compiled vs reference MiniLM: real-token vs padding split, pooled cosine, Lee Pearson.

Usage: python scripts/compiled_agreement.py STAGE...   (`make compiled-agreement` runs all four)
STAGE: torchao | pt2e | pt2e_eval | torchao_eval. Each adds its results to
src/quantbook/results/compiled_agreement.json, which chapter 06 reads. The stored run: this book's
2-core AVX2 machine (no VNNI), one thread, without the REPRODUCE settings; about 20 minutes.
"""
import json
import pathlib
import sys
import time

import torch

from quantbook.quiet import silence_known_noise

silence_known_noise()
torch.set_num_threads(1)

from quantbook import bench, explore_compiled  # noqa: E402
from quantbook.evaluate import embedding_cosine, evaluate_minilm  # noqa: E402
from quantbook.methods.compiled import PT2EConfig, quantize_pt2e  # noqa: E402
from quantbook.methods.inductor import compile_model  # noqa: E402
from quantbook.methods.torchao_activation import TorchaoDynamicConfig, quantize_torchao_dynamic  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "src" / "quantbook" / "results"
OUT = OUT / "compiled_agreement.json"
results = json.loads(OUT.read_text()) if OUT.exists() else {}


def save(key, value):
    results[key] = value
    OUT.write_text(json.dumps(results, indent=1))
    print(key, json.dumps(value, indent=1), flush=True)


def split(reference, other, mask):
    d = other - reference
    real = mask.bool()
    return {"all": float(d.norm() / reference.norm()),
            "real": float(d[real].norm() / reference[real].norm()),
            "pad": float(d[~real].norm() / reference[~real].norm()),
            "max_abs_real": float(d[real].abs().max()),
            "max_abs_pad": float(d[~real].abs().max())}


def pooled(t, mask):
    w = mask[..., None].float()
    v = (t * w).sum(1) / w.sum(1)
    return torch.nn.functional.normalize(v, dim=-1)


workload = bench.workload("minilm")
batch = workload.timed_inputs[0]
mask = batch["attention_mask"]
save("batch", {"shape": list(mask.shape), "pad_fraction": float(1 - mask.float().mean())})
model = workload.model.eval()
from quantbook.minilm import load_minilm  # noqa: E402

_, tokenizer = load_minilm()
with torch.inference_mode():
    float_out = model(**batch)[0]
float_eval = evaluate_minilm(model, tokenizer)
save("float", {"pearson": float_eval["pearson"]})
targets = workload.linear_targets

for stage in sys.argv[1:]:
    method = stage.split("_")[0]
    t0 = time.perf_counter()
    if method == "pt2e":
        ref, _ = quantize_pt2e(model, PT2EConfig(targets=targets), workload.calibration)
    else:
        ref, _ = quantize_torchao_dynamic(model, TorchaoDynamicConfig(targets=targets))
    compiled = compile_model(ref)
    with torch.inference_mode():
        ref_out = ref(**batch)[0]
        g0 = explore_compiled.graphs_compiled()
        fast = compiled(**batch)[0]
        g1 = explore_compiled.graphs_compiled()
    cos = torch.nn.functional.cosine_similarity(pooled(ref_out, mask), pooled(fast, mask), -1)
    save(method, {"compiled_vs_ref": split(ref_out, fast, mask),
                  "ref_vs_float": split(float_out, ref_out, mask),
                  "compiled_vs_float": split(float_out, fast, mask),
                  "pooled_cos_compiled_vs_ref": [round(float(c), 6) for c in cos],
                  "graphs": g1 - g0, "seconds": time.perf_counter() - t0})
    if stage.endswith("_eval"):
        ref_eval = evaluate_minilm(ref, tokenizer, reference=float_eval["embeddings"])
        g0, t1 = explore_compiled.graphs_compiled(), time.perf_counter()
        comp_eval = evaluate_minilm(compiled, tokenizer, reference=float_eval["embeddings"])
        g1 = explore_compiled.graphs_compiled()
        c = embedding_cosine(ref_eval["embeddings"], comp_eval["embeddings"])
        save(stage, {"ref_pearson": ref_eval["pearson"], "compiled_pearson": comp_eval["pearson"],
                     "ref_cos_float": ref_eval["cosine_mean"],
                     "compiled_cos_float": comp_eval["cosine_mean"],
                     "compiled_vs_ref_cos_mean": c["mean"], "compiled_vs_ref_cos_min": c["min"],
                     "graphs_during_eval": g1 - g0, "eval_s": time.perf_counter() - t1})
