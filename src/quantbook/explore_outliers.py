"""The activation-outliers chapter: find outlier channels, run the remedies, show the results.

Statistics are per channel of each tensor: ``ratio = max_j max|x_j| / median_j max|x_j|``, the
top channel's range over the median channel's, for the input and output of every Linear and
LayerNorm. The remedies are the methods :mod:`quantbook.methods.float_output`,
:mod:`~quantbook.methods.smoothquant`, :mod:`~quantbook.methods.decomposed` and
:mod:`~quantbook.methods.peg`, run through a
:class:`~quantbook.sweep.Sweep` with :func:`quantize_remedy`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from quantbook.affine import sqnr_db
from quantbook.methods import MethodConfig, quantize
from quantbook.methods.base import run_hooked
from quantbook.methods.decomposed import DecompositionConfig, quantize_decomposed
from quantbook.methods.float_output import (
    ChannelRange,
    FloatOutputConfig,
    input_qparams,
    quantize_float_output,
    quantize_weight,
)
from quantbook.methods.peg import PEGConfig, PEGLinear, peg_groups, quantize_peg
from quantbook.methods.smoothquant import SmoothQuantConfig, quantize_smoothquant, smooth_scales
from quantbook.methods.static import forward_batch
from quantbook.records import BenchRecord
from quantbook.sweep import Workload

RESULTS = pathlib.Path(__file__).parent / "results" / "outliers.json"
ALPHAS = (0.0, 0.25, 0.5, 0.65, 0.8, 0.9, 1.0)  # the sweep of the chapter and its explorers
REMEDIES: dict[type[MethodConfig], Callable] = {
    FloatOutputConfig: quantize_float_output,
    SmoothQuantConfig: quantize_smoothquant,
    DecompositionConfig: quantize_decomposed,
    PEGConfig: quantize_peg,
}
# family -> (role, module name after the layer prefix, side): the tensors the chapter follows
ROLES = {
    "bert": (("q/k/v input", "attention.self.query", "input"),
             ("attention-output input", "attention.output.dense", "input"),
             ("FFN input", "intermediate.dense", "input"),
             ("FFN output.dense input", "output.dense", "input"),
             ("FFN output.dense output", "output.dense", "output"),
             ("residual sum", "output.LayerNorm", "input")),
    "gpt": (("q/k/v input", "attn.q_proj", "input"),
            ("attention-output input", "attn.out_proj", "input"),
            ("FFN input", "mlp.fc_in", "input"),
            ("FFN fc_out input", "mlp.fc_out", "input"),
            ("FFN fc_out output", "mlp.fc_out", "output")),
}


def quantize_remedy(model: nn.Module, config: MethodConfig, batches: Sequence | None = None):
    """:func:`quantbook.methods.quantize`, extended with this chapter's methods."""
    method = REMEDIES.get(type(config))
    return quantize(model, config, batches) if method is None else method(model, config, batches)


def bench_configs(workload: Workload) -> dict[str, MethodConfig]:
    """The remedied rows for ``make bench``: label -> config on the workload's Linears."""
    linears = workload.linear_targets
    return {
        "static int8, float outputs": FloatOutputConfig(targets=linears),
        "SmoothQuant a=0.9, static int8": SmoothQuantConfig(targets=linears, alpha=0.9),
        "LLM.int8() decomposition, static int8": DecompositionConfig(targets=linears),
        "PEG (6 groups), static int8": PEGConfig(targets=linears, n_groups=6),
    }


def minilm_outlier_workload(n_batches: int = 2, timed_documents: int = 4
                            ) -> tuple[Workload, object]:
    """MiniLM with the chapter's calibration (``n_batches`` of 4 articles, 128 tokens) and a
    timed call that encodes the first ``timed_documents`` Lee documents; returns it and the
    tokenizer."""
    from quantbook import data, minilm
    from quantbook.workloads import minilm_quality

    model, tokenizer = minilm.load_minilm()
    timed = dict(tokenizer(data.lee_documents()[:timed_documents], padding=True,
                           truncation=True, max_length=minilm.max_seq_length(),
                           return_tensors="pt"))
    calibration = data.minilm_calibration_batches(tokenizer, n_batches=n_batches, batch_size=4,
                                                  max_length=128)  # training articles only
    workload = Workload("minilm", model, metric="lee_pearson",
                        evaluate=minilm_quality(model, tokenizer), run=lambda m: m(**timed),
                        calibration=calibration, timed_inputs=[timed["input_ids"]])
    return workload, tokenizer


def activation_absmax(model: nn.Module, batches: Sequence,
                      kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.LayerNorm),
                      run_fn: Callable = forward_batch) -> dict[tuple[str, str], torch.Tensor]:
    """Per-channel max |x| of the input and output of every module of ``kinds``.

    Returns:
        ``{(name, "input" | "output"): (C,) tensor}``; the hooks are removed afterwards.
    """
    stats: dict[tuple[str, str], torch.Tensor] = {}

    def hook(name: str):
        def record(_module, args, output):
            for side, t in (("input", args[0]), ("output", output)):
                a = t.detach().abs().reshape(-1, t.shape[-1]).amax(0)  # (C,)
                key = (name, side)
                stats[key] = torch.maximum(stats[key], a) if key in stats else a
        return record

    run_hooked(model, batches, run_fn, [m.register_forward_hook(hook(n))
                                        for n, m in model.named_modules() if isinstance(m, kinds)])
    return stats


def outlier_ratio(absmax: torch.Tensor) -> tuple[float, int]:
    """``(top channel's max|x| / the median channel's, top channel)``.

    Example: ``outlier_ratio(torch.tensor([1.0, 2.0, 40.0]))`` is ``(20.0, 2)``.
    """
    top = int(absmax.argmax())
    return float(absmax[top] / absmax.median().clamp(min=1e-12)), top


def role_rows(stats: Mapping[tuple[str, str], torch.Tensor], family: str,
              n_layers: int) -> list[dict]:
    """One row per role and layer: ``role``, ``layer``, ``ratio``, ``channel``, ``absmax``."""
    prefix = {"bert": "encoder.layer.{}.", "gpt": "blocks.{}."}[family]
    rows = []
    for role, name, side in ROLES[family]:
        for layer in range(n_layers):
            absmax = stats[(prefix.format(layer) + name, side)]
            ratio, channel = outlier_ratio(absmax)
            rows.append({"role": role, "layer": layer, "ratio": ratio, "channel": channel,
                         "absmax": float(absmax[channel])})
    return rows


def worst_by_role(rows: Sequence[dict]) -> list[dict]:
    """The row with the largest ratio of each role, in role order."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["role"] not in best or row["ratio"] > best[row["role"]]["ratio"]:
            best[row["role"]] = row
    return list(best.values())


def ratio_figure(rows: Sequence[dict], title: str) -> plt.Figure:
    """Outlier ratio per layer, one line per role, on a log scale; the legend stands beside the
    axes (the figure is about FIGURE_WIDTH_IN wide with it)."""
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    for role in dict.fromkeys(r["role"] for r in rows):
        mine = [r for r in rows if r["role"] == role]
        ax.plot([r["layer"] for r in mine], [r["ratio"] for r in mine], marker="o", label=role)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("top channel / median channel (max |x|)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def fake_w8a8(x: torch.Tensor, linear: nn.Linear, s: torch.Tensor | None = None) -> torch.Tensor:
    """The static W8A8 product of ``linear`` on ``x`` (input min-max 7-bit, per-row weights),
    smoothed by ``s`` first when given; float32 output, as :class:`StaticInt8Linear` computes."""
    weight = linear.weight.detach()
    if s is not None:
        x, weight = x / s, weight * s
    scale, zero_point = input_qparams(x.min(), x.max())
    fake_x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 127)
    fake_w = quantize_weight(weight).dequantize()
    return nn.functional.linear(fake_x, fake_w, linear.bias)


def layer_sqnr(x: torch.Tensor, linear: nn.Linear, alphas: Sequence[float | None]
               ) -> dict[float | None, float]:
    """Output SQNR (dB) of one Linear's static W8A8 product on ``x``, per alpha (None: none)."""
    with torch.no_grad():
        reference = linear(x)
        absmax = x.abs().reshape(-1, x.shape[-1]).amax(0)
        weight_absmax = linear.weight.detach().abs().amax(0)
        return {a: sqnr_db(reference, fake_w8a8(x, linear, None if a is None else
                                                smooth_scales(absmax, weight_absmax, a)))
                for a in alphas}


def peg_layer_sqnr(x: torch.Tensor, linear: nn.Linear, n_groups: Sequence[int]
                   ) -> dict[int, float]:
    """Output SQNR (dB) of one Linear as a :class:`PEGLinear` calibrated on ``x``, per K."""
    flat = x.detach().reshape(-1, x.shape[-1])  # (tokens, C)
    found = ChannelRange(flat.amin(0), flat.amax(0))
    result = {}
    with torch.no_grad():
        reference = linear(x)
        for k in n_groups:
            columns = peg_groups(found, k)
            qparams = [input_qparams(found.min[c].min(), found.max[c].max()) for c in columns]
            result[k] = sqnr_db(reference, PEGLinear(linear, columns, qparams)(x))
    return result


def torchao_smoothquant(linear: nn.Linear, inputs: Sequence[torch.Tensor], alpha: float
                        ) -> tuple[nn.Module, torch.Tensor]:
    """torchao's prototype SmoothQuant (static per-tensor int8) on a copy of one Linear.

    Returns:
        ``(quantized module, smoothing factors s)``; torchao stores ``1 / s`` on the weight.
    """
    from torchao.prototype.smoothquant import SmoothQuantConfig as TorchaoSmoothQuant
    from torchao.quantization import (
        Int8StaticActivationInt8WeightConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    base = Int8StaticActivationInt8WeightConfig(granularity=[PerTensor(), PerRow()],
                                                set_inductor_config=False)
    module = nn.Sequential(copy.deepcopy(linear)).eval()
    quantize_(module, TorchaoSmoothQuant(base_config=base, step="prepare", alpha=alpha))
    with torch.no_grad():
        for x in inputs:
            module(x.reshape(-1, x.shape[-1]))  # (tokens, C): any sequence length
    quantize_(module, TorchaoSmoothQuant(base_config=base, step="convert", alpha=alpha))
    return module, 1.0 / module[0].weight.act_pre_scale


def load_results(path: str | pathlib.Path = RESULTS) -> tuple[dict, list[BenchRecord]]:
    """What ``scripts/outliers_bench.py`` wrote: ``(extras, records)``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r} holds no results: run `make outliers`")
    payload = json.loads(path.read_text())
    records = [BenchRecord(**r) for r in payload.pop("records")]
    return payload, records


def save_results(path: str | pathlib.Path, records: Sequence[BenchRecord], **extras) -> None:
    """Write records and extra figures as JSON (the inverse of :func:`load_results`)."""
    from quantbook.records import write_json_atomic

    write_json_atomic({**extras, "records": [dataclasses.asdict(r) for r in records]}, path)


def result_html(record: BenchRecord, float_value: float) -> str:
    """One record as a short HTML table: cosine, Pearson, its change, the target."""
    from quantbook import kit

    delta = record.value - float_value
    cosine = record.quality("cosine_mean")
    meets = cosine >= 0.97 and abs(delta) <= 0.01
    row = {"method": record.method, "cosine": cosine, "pearson": record.value, "delta": delta,
           "target": "met" if meets else "missed"}
    table = kit.table([row], columns={"method": "method", "cosine": "cosine to float",
                                      "pearson": "Lee Pearson", "delta": "change",
                                      "target": "target"},
                      formats={"cosine": ".4f", "pearson": ".4f", "delta": "+.4f"},
                      mark=lambda r: r["target"] == "met")
    return table._repr_html_()


def layernorm_split(model: nn.Module, name: str, batches: Sequence,
                    run_fn: Callable = forward_batch) -> dict[str, torch.Tensor]:
    """Per-channel max |x| of a LayerNorm's normalized input and of its output (gamma, beta).

    Returns:
        ``{"normalized": (C,), "output": (C,)}``: the outlier ratio before and after the affine
        step shows what the LayerNorm's own weights add.
    """
    norm = model.get_submodule(name)
    seen: dict[str, torch.Tensor] = {}

    def record(_module, args, output):
        x = args[0].detach()
        normalized = nn.functional.layer_norm(x, norm.normalized_shape, eps=norm.eps)
        for key, t in (("normalized", normalized), ("output", output.detach())):
            a = t.abs().reshape(-1, t.shape[-1]).amax(0)  # (C,)
            seen[key] = torch.maximum(seen[key], a) if key in seen else a

    run_hooked(model, batches, run_fn, [norm.register_forward_hook(record)])
    return seen


def alpha_explorer(sweep, float_value: float, start: float = 0.9):
    """Live explorer: an alpha slider; each new alpha builds and evaluates one model (seconds).

    The box's ``html`` attribute is the result on show.
    """
    import ipywidgets as widgets

    slider = widgets.FloatSlider(value=start, min=0.0, max=1.0, step=0.05, description="alpha",
                                 continuous_update=False)
    html = widgets.HTML()

    def update(_change=None) -> None:
        record = sweep.record(SmoothQuantConfig(alpha=round(slider.value, 2)))
        html.value = result_html(record, float_value)

    update()
    slider.observe(update, names="value")
    box = widgets.VBox([slider, html])
    box.html = html
    return box


def pt2e_linear_boundaries() -> dict[str, dict[str, str]]:
    """What PT2E's x86 recipe puts around each Linear of a tiny Linear -> LayerNorm -> Linear.

    Returns:
        ``{linear node: {"input": op making its input, "output": op using its output}}``, e.g.
        ``{"linear": {"input": "dequantize_per_tensor", "output": "layer_norm"}, ...}``.
    """
    from quantbook.quiet import quiet_torch_ao

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4)).eval()
    x = torch.randn(4, 8)  # (tokens, C)
    with quiet_torch_ao():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = xiq.X86InductorQuantizer().set_global(
            xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(torch.export.export(tiny, (x,)).module(), quantizer)
        prepared(x)  # calibrate
        graph = convert_pt2e(prepared).graph

    def short(node) -> str:
        return getattr(node.target, "__name__", str(node.target)).split(".")[0]

    return {n.name: {"input": short(n.args[0]), "output": short(next(iter(n.users)))}
            for n in graph.nodes if n.op == "call_function" and short(n) == "linear"}
