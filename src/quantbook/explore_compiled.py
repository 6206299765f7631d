"""What inductor made of a model, what a new shape costs, and the committed compiled bench.

* :func:`capture_code` collects the Python wrapper inductor writes for each graph it compiles;
  :func:`kernel_census` and :func:`fused_ops` turn that code into a few readable lines (which
  library kernels are called, and which operations each generated C++ kernel fuses).
* :func:`shape_costs` calls a compiled model on a list of input shapes and counts the graphs
  compiled and the seconds spent at each: the cost of a recompile.
* :func:`load_compiled` reads ``src/quantbook/results/compiled.json`` (written by
  ``make bench-compiled``) and :func:`speedup_rows` makes the table chapter 06 and the
  compiled chapter show.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from quantbook.records import BenchRecord, load_records

COMMITTED = pathlib.Path(__file__).parent / "results" / "compiled.json"
# operations that only move or reshape data: left out when naming what a kernel fuses
LAYOUT_OPS = frozenset({"view", "clone", "transpose", "unsafe", "permute", "expand", "slice",
                        "unsqueeze", "squeeze", "to", "copy", "arange", "new", "ones",
                        "zeros", "like", "scalar", "tensor", "index", "cat", "select", "t",
                        "reshape", "full", "lift", "fresh", "constant"})
_KERNEL = re.compile(r"\b(cpp_fused_\w+?)(?:_\d+)?\(")
_CALL = re.compile(r"\b((?:extern_kernels|torch\.ops\.\w+|aten)\.[\w.]+)\(")


@contextlib.contextmanager
def capture_code() -> Iterator[list[str]]:
    """Collect the wrapper code of every graph inductor compiles inside the block.

    Inductor's on-disk caches are off inside the block: a cache hit would load the compiled
    graph without generating (or showing) its code, and would hide the cost of compiling.

    Yields:
        A list that fills with one string per compiled graph (like
        ``torch._inductor.utils.run_and_get_code``, without resetting dynamo's caches).
    """
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    saved = GraphLowering.save_output_code
    GraphLowering.save_output_code = staticmethod(codes.append)
    try:
        with (inductor_config.patch(fx_graph_cache=False),
              functorch_config.patch(enable_autograd_cache=False)):
            yield codes
    finally:
        GraphLowering.save_output_code = saved


def _call_body(code: str) -> list[str]:
    """The stripped lines of the wrapper's ``def call(...)`` function."""
    lines = code.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*def call\(", line)), None)
    if start is None:
        raise ValueError("code holds no 'def call(' function: pass the wrapper code that "
                         "capture_code() collected")
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line.strip())
    return body


def kernel_census(codes: Sequence[str]) -> Counter:
    """What the compiled graphs call at run time: library kernels by name, generated C++
    kernels as ``"cpp_fused (generated C++)"``.

    Example: a compiled ``Linear -> GELU`` on the CPU gives ``{"extern_kernels.addmm": 1,
    "cpp_fused (generated C++)": 1}`` (or ``torch.ops.mkl._mkl_linear`` with freezing).
    """
    if isinstance(codes, str):
        codes = [codes]
    census = Counter()
    for code in codes:
        for line in _call_body(code):
            if line.startswith(("assert_", "#")):
                continue
            if _KERNEL.search(line):
                census["cpp_fused (generated C++)"] += 1
            elif (match := _CALL.search(line)) is not None:
                census[match.group(1).removesuffix(".default")] += 1
    return census


def fused_ops(kernel_name: str) -> tuple[str, ...]:
    """The computing operations a generated kernel's name lists, layout moves left out.

    Example: ``"cpp_fused_add_native_layer_norm_quantize_per_tensor_view"`` ->
    ``("add", "layer_norm", "quantize_per_tensor")``.
    """
    name = kernel_name.removeprefix("cpp_fused_").replace("native_layer_norm", "layer_norm")
    for joined in ("layer_norm", "quantize_per_tensor", "masked_fill", "bitwise_not",
                   "scaled_dot_product_flash_attention_for_cpu"):
        name = name.replace(joined, joined.replace("_", "~"))
    ops = [part.replace("~", "_") for part in name.split("_") if part]
    return tuple(dict.fromkeys(op for op in ops if op not in LAYOUT_OPS))


def fused_kernels(codes: Sequence[str], top: int = 5) -> list[tuple[str, int]]:
    """The ``top`` most frequent generated kernels as ``(" + ".join(fused ops), count)``."""
    if isinstance(codes, str):
        codes = [codes]
    counts = Counter()
    for code in codes:
        for line in _call_body(code):
            if (match := _KERNEL.search(line)) is not None:
                counts[" + ".join(fused_ops(match.group(1))) or "(layout only)"] += 1
    return counts.most_common(top)


def graphs_compiled() -> int:
    """How many graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def shape_costs(model: Callable, make_input: Callable[[int, int], object],
                shapes: Sequence[tuple[int, int]]) -> list[dict]:
    """Call ``model`` once per ``(batch, seq)`` shape: new graphs and seconds of each call.

    Args:
        model: a compiled model (e.g. from :func:`quantbook.methods.inductor.compile_model`).
        make_input: ``(batch, seq) -> input`` (a tensor, or a dict passed as keywords).
        shapes: the shapes, in calling order.

    Returns:
        One dict per shape: ``batch``, ``seq``, ``new_graphs``, ``seconds``.
    """
    rows = []
    with torch.inference_mode():
        for batch, seq in shapes:
            x = make_input(batch, seq)
            before, start = graphs_compiled(), time.perf_counter()
            model(**x) if isinstance(x, dict) else model(x)
            rows.append({"batch": batch, "seq": seq, "seconds": time.perf_counter() - start,
                         "new_graphs": graphs_compiled() - before})
    return rows


def load_compiled(path: str | pathlib.Path = COMMITTED) -> tuple[dict, list[BenchRecord]]:
    """The committed compiled bench: ``(meta, records)``; meta holds ``kernels``, ``shapes``."""
    return load_records(path)


def speedup_rows(records: Sequence[BenchRecord], model: str) -> list[dict]:
    """One row per timed record of ``model``: label, both speed-ups, quality, compile seconds."""
    rows = []
    for r in records:
        if r.model != model or r.latency_ms is None:
            continue
        rows.append({"method": r.method, "latency_ms": r.latency_ms,
                     "vs_eager": r.speedup, "vs_compiled": r.speedup_vs_compiled,
                     "metric": r.value, "cosine": r.secondary.get("cosine_mean"),
                     "compile_s": r.compile_s})
    if not rows:
        raise ValueError(f"model={model!r} has no timed records: choose from "
                         f"{sorted({r.model for r in records})}")
    return rows


def _fake_quant(x: torch.Tensor, low: float, high: float, qmax: int = 127) -> torch.Tensor:
    """Round ``x`` to the asymmetric grid ``[0, qmax]`` spanning ``[low, high]`` (and 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-8) / qmax
    zero_point = int(round(-low / scale))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, qmax)


def placement_outputs(model: nn.Module, batch: dict,
                      quantize_output: Callable[[str], bool]) -> torch.Tensor:
    """MiniLM's token vectors with every Linear simulated in int8, outputs on request.

    Each Linear gets int8 per-channel weights and 7-bit per-tensor input codes (min-max range
    over ``batch``), as PT2E's x86 quantizer places them; a Linear for which
    ``quantize_output(name)`` is true also has its *output* rounded to 7-bit codes, as eager
    static quantization does (its int8 Linear writes quint8).

    Returns:
        ``last_hidden_state``, ``(B, T, hidden)``.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    ranges: dict[str, list[tuple[float, float]]] = {}

    def observe(name):
        def hook(_module, args, out):
            ranges[name] = [(float(t.min()), float(t.max())) for t in (args[0], out)]
        return hook

    def simulate(name):
        def hook(module, args, _out):
            (x_low, x_high), (y_low, y_high) = ranges[name]
            w = module.weight
            w_scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127  # (out_features,)
            zeros = torch.zeros_like(w_scale, dtype=torch.int32)
            w_q = torch.fake_quantize_per_channel_affine(w, w_scale, zeros, 0, -128, 127)
            y = nn.functional.linear(_fake_quant(args[0], x_low, x_high), w_q, module.bias)
            return _fake_quant(y, y_low, y_high) if quantize_output(name) else y
        return hook

    with torch.no_grad():
        for make in (observe, simulate):
            handles = [m.register_forward_hook(make(n)) for n, m in linears.items()]
            try:
                out = model(**batch).last_hidden_state
            finally:
                for handle in handles:
                    handle.remove()
    return out


def pooled_cosine(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean cosine between mask-averaged sentence vectors (how MiniLM pools its tokens)."""
    weights = mask[..., None].float()  # (B, T, 1)
    a, b = ((t * weights).sum(1) / weights.sum(1) for t in (reference, other))  # (B, hidden)
    return float(nn.functional.cosine_similarity(a, b, dim=-1).mean())


def agreement(reference: torch.Tensor, other: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> dict[str, float | None]:
    """How far ``other`` (say a compiled model's output) is from ``reference``: relative norms.

    MiniLM's mean pooling drops the vectors at padding positions, so with a mask the
    difference is also given over real tokens alone (the ones a sentence embedding keeps)
    and over padding. Example: reference ``[[1, 0], [1, 0]]``, other ``[[1, 0], [0, 0]]``,
    mask ``[1, 0]`` (one real token, one pad): ``relative_difference`` 0.71, ``_real`` 0.0.

    Args:
        reference: ``(B, T, ...)`` outputs of the reference model.
        other: the same shape.
        attention_mask: optional ``(B, T)``, 1 at real tokens and 0 at padding.

    Returns:
        ``relative_difference`` (``|other - reference| / |reference|`` over all positions);
        with a mask, also ``relative_difference_real`` and ``relative_difference_padding``
        (``None`` when the batch has no padding).
    """
    given = {"reference": reference, "other": other}
    if attention_mask is not None:
        given["attention_mask"] = attention_mask
    for name, value in given.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}: pass a tensor (a model's "
                            "output[0] or .last_hidden_state; the batch's attention_mask)")
    if other.shape != reference.shape:
        raise ValueError(f"other has shape {tuple(other.shape)}, reference "
                         f"{tuple(reference.shape)}: pass two outputs of the same call")
    reference, other = reference.float(), other.float()

    def relative(where: torch.Tensor | None = None) -> float:
        ref, diff = (reference, other - reference) if where is None else (
            reference[where], (other - reference)[where])
        if not ref.norm() > 0:
            raise ValueError("reference is all zeros over the positions compared: a relative "
                             "difference needs a nonzero reference output")
        return float(diff.norm() / ref.norm())

    result: dict[str, float | None] = {"relative_difference": relative()}
    if attention_mask is None:
        return result
    if attention_mask.shape != reference.shape[:2]:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}: expected "
                         f"{tuple(reference.shape[:2])}, the (batch, tokens) of the outputs "
                         "(pass the mask of the batch that made them)")
    real = attention_mask.bool()
    if not real.any():
        raise ValueError("attention_mask is all zeros: it marks no real token (1 = token, "
                         "0 = padding)")
    result["relative_difference_real"] = relative(real)
    result["relative_difference_padding"] = relative(~real) if not real.all() else None
    return result


def output_spans(model: nn.Module, batch: dict) -> dict[str, float]:
    """``max - min`` of every Linear's output over ``batch``, widest first."""
    spans: dict[str, float] = {}

    def observe(name):
        def hook(_module, _args, out):
            spans[name] = float(out.max() - out.min())
        return hook

    handles = [m.register_forward_hook(observe(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return dict(sorted(spans.items(), key=lambda item: -item[1]))


def describe(record: BenchRecord, kernels: dict | None = None) -> str:
    """A few lines of HTML: a path's speed-ups against both baselines, quality, compile cost."""
    figures = {record.metric: record.value, **record.secondary}
    quality = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in figures.items())
    lines = [f"<b>{record.model}: {record.method}</b>", f"quality: {quality}"]
    if record.latency_ms is not None:
        versus = ("" if record.speedup_vs_compiled is None
                  else f", {record.speedup_vs_compiled:.2f}x float32 compiled")
        lines.append(f"{record.latency_ms:.0f} ms per call: {record.speedup:.2f}x float32 "
                     f"eager{versus}")
    if record.compile_s is not None:
        lines.append(f"first call (compiles): {record.compile_s:.0f} s")
    if kernels:
        top = ", ".join(f"{n} x {k.split('.')[-1]}" for k, n in kernels["census"].items())
        lines.append(f"kernels per call: {top}")
    return "<br>".join(lines)


def explorer(records: Sequence[BenchRecord], details: dict, start: str) -> object:
    """Kernel-free explorer: a slider over every measured (model, path) of the artifact."""
    from ipywidgets import HTML

    from quantbook.widgets import linked_views

    timed = [r for r in records if r.latency_ms is not None]
    labels = [f"{r.model}: {r.method}" for r in timed]
    views = [HTML(describe(r, details[r.model]["kernels"].get(r.method))) for r in timed]
    return linked_views(labels, views, "model: path", start=labels.index(start))
