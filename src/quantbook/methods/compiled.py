"""Static int8 the current way: PT2E export quantization, then ``torch.compile`` (inductor).

Eager static quantization (:mod:`quantbook.methods.static`) wraps each Linear in its own
quantize -> int8 Linear -> dequantize island. PT2E works on a whole captured graph instead:

1. ``torch.export`` captures the model as an ATen graph, here with a dynamic batch and
   sequence dimension (one program serves every input shape);
2. ``X86InductorQuantizer`` *annotates* the graph: it marks which tensors get int8 codes (the
   inputs and weights of the selected Linears) and ``prepare_pt2e`` inserts observers there;
3. calibration runs the prepared graph on real batches;
4. ``convert_pt2e`` replaces the observers by explicit quantize / dequantize operations
   (a "q/dq" reference graph that still computes in float);
5. :func:`~quantbook.methods.inductor.compile_model` hands that graph to inductor, whose x86
   passes (with *freezing*) fold each dequantize -> linear -> quantize pattern into one
   oneDNN int8 kernel, with the following residual add fused into its epilogue.

:func:`quantize_pt2e` does steps 1 to 4 on the one method shape; step 5 is
:mod:`quantbook.methods.inductor`, for any model (float, torchao, PT2E). Inductor writes
C++ and needs a working C++ compiler at run time
(:func:`~quantbook.methods.inductor.check_cpp_compiler`).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook.methods.base import MethodConfig, QuantReport, float_leaf_modules, select
from quantbook.methods.static import forward_batch
from quantbook.quiet import quiet_torch_ao
from quantbook.validate import check_batches, check_model

# ops of the converted graph that stay float between the int8 Linears (for the report)
FLOAT_OP_NAMES = ("embedding", "layer_norm", "gelu", "softmax", "scaled_dot_product_attention",
                  "matmul", "masked_fill", "add")
_QDQ = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
        "dequantize_per_channel")


@dataclass(frozen=True)
class PT2EConfig(MethodConfig):
    """PT2E static int8 with ``X86InductorQuantizer`` on the selected Linears.

    Attributes:
        targets: Linear groups of :data:`quantbook.targets.GROUPS`.
        reduce_range: activation codes ``[0, 127]`` instead of ``[0, 255]``. The x86 int8
            kernels of CPUs without VNNI (AVX2) add pairs of uint8 x int8 products in 16-bit
            registers, which full 8-bit activations can overflow; with VNNI or AMX either
            setting is exact. On by default so that results hold on every x86 CPU.
    """

    reduce_range: bool = True  # 7-bit activations: exact on AVX2 too (torchao defaults to False)

    family: ClassVar[str] = "static (PT2E)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reduce_range, bool):
            raise TypeError(f"reduce_range={self.reduce_range!r} is not supported: pass True "
                            "(activation codes 0..127) or False (0..255, CPUs with VNNI)")
        if "embeddings" in self.targets:
            raise ValueError(f"targets={self.targets!r} names 'embeddings': PT2E's x86 "
                             "quantizer converts Linear layers; choose from 'attention', "
                             "'ffn', 'head'")

    @property
    def label(self) -> str:
        """``"PT2E static int8"`` (``", 8-bit activations"`` without ``reduce_range``)."""
        return "PT2E static int8" + ("" if self.reduce_range else ", 8-bit activations")


def _is_converted_graph(model: nn.Module) -> bool:
    """Whether ``model`` is a graph that already holds quantize or observer nodes."""
    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(node.op == "call_function" and any(q in str(node.target) for q in _QDQ)
               or node.op == "call_module" and "observer" in node.target.lower()
               for node in model.graph.nodes)


def export_ready(model: nn.Module) -> nn.Module:
    """``model``, or for quantbook's GPT a copy whose causal mask has one spare row and column.

    ``causal_mask[:T, :T]`` on a ``(block, block)`` buffer makes export guard ``T !=
    block_size`` (a full slice returns the buffer itself), so a dynamic sequence length up to
    ``block_size`` cannot be exported. The mask is a non-persistent buffer: weights and outputs
    are unchanged.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not all(
            hasattr(getattr(b, "attn", None), "causal_mask") for b in blocks):
        return model
    model = copy.deepcopy(model)
    n = model.config.block_size + 1
    for block in model.blocks:
        block.attn.causal_mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return model


def _longest(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return (getattr(config, "block_size", None)
            or getattr(config, "max_position_embeddings", None))


def export_model(model: nn.Module, example) -> torch.export.ExportedProgram:
    """``torch.export`` with dynamic batch (1..64) and sequence dimensions.

    Args:
        model: a float model (quantbook's GPT, a BERT) or a converted PT2E graph.
        example: one batch: a ``(B, T)`` tensor, or a tokenizer's dict of them.

    Raises:
        ValueError: torch.export cannot capture the model; the message keeps its first line.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=64)
    longest = _longest(model)
    seq = Dim("seq", min=2, max=longest) if longest else Dim("seq", min=2)
    ready = export_ready(model)
    try:
        if isinstance(example, dict):
            shapes = {key: {0: batch, 1: seq} for key in example}
            return torch.export.export(ready, (), dict(example), dynamic_shapes=shapes)
        return torch.export.export(ready, (example,), dynamic_shapes=({0: batch, 1: seq},))
    except Exception as error:  # torch.export raises many types; all mean "cannot capture"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"torch.export could not capture this {type(model).__name__} "
            f"({type(error).__name__}: {first[:200]}). PT2E quantizes a whole captured graph: "
            "remove Python control flow that depends on tensor values (if x.sum() > 0, "
            ".item(), data-dependent shapes) or use an eager method such as "
            "quantize_static") from error


def _linear_module(node: torch.fx.Node) -> str | None:
    """The module name a graph node came from (the innermost entry of its module stack)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def converted_linears(graph_module: torch.fx.GraphModule) -> tuple[str, ...]:
    """Names of the Linears whose weight the converted graph dequantizes from int8 codes."""
    names = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "linear" in str(node.target):
            weight = node.args[1] if len(node.args) > 1 else None
            if (isinstance(weight, torch.fx.Node) and "dequantize" in str(weight.target)
                    and (name := _linear_module(node)) is not None):
                names.append(name)
    return tuple(dict.fromkeys(names))


def op_census(graph_module: torch.fx.GraphModule) -> Counter:
    """How often each operation appears in a graph, by short name (``"linear"``, ...)."""
    census = Counter()
    for node in graph_module.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            census[name.split(".")[0]] += 1
    return census


def quantize_pt2e(model: nn.Module, config: PT2EConfig, batches: Sequence,
                  run_fn: Callable[[nn.Module, object], None] = forward_batch
                  ) -> tuple[torch.fx.GraphModule, QuantReport]:
    """Export, annotate, calibrate and convert: PT2E static int8 for x86 inductor.

    Args:
        model: the float model (quantbook's GPT or MiniLM); not modified.
        config: the selection and the activation range.
        batches: calibration batches (token ids, or a tokenizer's dicts); the first one is the
            export example.
        run_fn: ``run_fn(model, batch)`` runs one batch.

    Returns:
        ``(converted, report)``: the converted q/dq graph (a ``GraphModule`` computing in float
        with explicit quantize / dequantize steps;
        :func:`~quantbook.methods.inductor.compile_model` makes it int8) and what was
        converted.
    """
    if not isinstance(config, PT2EConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a PT2EConfig")
    if _is_converted_graph(model):
        raise ValueError(f"{config.label}: the model is a graph that already holds quantize "
                         "or observer nodes (a PT2E result): quantize the float model, not a "
                         "quantized copy (keep a reference to the float model, or reload it)")
    check_model(model, config.label)
    batches = check_batches(model, batches)
    selection = select(model, config)
    with quiet_torch_ao():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        program = export_model(model, batches[0])
        quantizer = xiq.X86InductorQuantizer()
        qconfig = xiq.get_default_x86_inductor_quantization_config(
            reduce_range=config.reduce_range)
        for name in selection.chosen:
            quantizer.set_module_name_qconfig(name, qconfig)
        prepared = prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for batch in batches:
                run_fn(prepared, batch)
        converted = convert_pt2e(prepared)
    # evaluators call model.eval() and then restore the mode they found; torchao's eval()
    # does not clear .training, so clear it here, or the restore would move the graph to its
    # training form (which computes differently)
    allow_exported_model_train_eval(converted)
    converted.training = False
    converted.config = getattr(model, "config", None)  # quantbook's evaluators read it
    done = converted_linears(converted)
    missing = [n for n in selection.chosen if n not in done]
    if not done:
        raise ValueError(f"{config.label} converted no Linear: the quantizer annotated none "
                         f"of {list(selection.chosen)[:3]}; report this model as a bug")
    census = op_census(converted)
    report = QuantReport(
        label=config.label, family=config.family, converted=done,
        skipped=(*selection.skipped, *((n, "the quantizer left it float") for n in missing)),
        float_modules=float_leaf_modules(model, done),
        float_ops=tuple(op for op in FLOAT_OP_NAMES if census.get(op)))
    return converted, report


def bench_configs(workload) -> dict[str, MethodConfig]:
    """The compiled rows of ``make bench``, label -> config, on ``workload``'s Linear groups.

    Run them through ``Sweep(workload, compiled=True)``, which compiles every model it builds
    and adds the ``"float32 compiled"`` baseline row itself.
    """
    from quantbook.methods.torchao_activation import TorchaoDynamicConfig

    linears = tuple(workload.linear_targets)
    return {"torchao int8 dynamic, compiled": TorchaoDynamicConfig(targets=linears),
            "PT2E static int8, compiled": PT2EConfig(targets=linears)}
