"""Tests for quantbook.methods.compiled (PT2E static int8) and methods.inductor (compile)."""

import pytest
import torch
from conftest import make_bert, make_gpt
from torch import nn

from quantbook.methods import StaticConfig, TorchaoDynamicConfig, compiled, quantize_static
from quantbook.methods.compiled import (
    PT2EConfig,
    bench_configs,
    export_ready,
    quantize_pt2e,
)
from quantbook.methods.inductor import compile_model
from quantbook.sweep import Workload

TARGETS = ("attention", "ffn", "head")


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def model():
    return make_gpt(n_layer=1)


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(3)]


@pytest.fixture(scope="module")
def pt2e(model, batches):
    return quantize_pt2e(model, PT2EConfig(targets=TARGETS), batches)


def test_config_label_family_and_checks():
    assert PT2EConfig().label == "PT2E static int8"
    assert PT2EConfig(reduce_range=False).label == "PT2E static int8, 8-bit activations"
    assert PT2EConfig.family == "static (PT2E)" and PT2EConfig().reduce_range is True
    with pytest.raises(TypeError, match=r"reduce_range=1 is not supported: pass True"):
        PT2EConfig(reduce_range=1)
    with pytest.raises(ValueError, match=r"names 'embeddings': PT2E's x86 quantizer converts "
                                         r"Linear layers"):
        PT2EConfig(targets=("embeddings",))


def test_report_names_every_selected_linear(model, pt2e):
    converted, report = pt2e
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert report.converted == tuple(linears)  # q, k, v, out, fc, proj and the head
    assert report.label == "PT2E static int8" and report.family == "static (PT2E)"
    assert converted.training is False  # returned in eval mode, like every method's copy
    assert {"layer_norm", "gelu", "add"} <= set(report.float_ops)
    assert "blocks.0.ln_1" in report.float_modules and "lm_head" not in report.float_modules
    census = compiled.op_census(converted)
    assert census["dequantize_per_channel"] == len(linears)  # one int8 weight per Linear
    assert census["linear"] == len(linears)


def test_exclude_keeps_a_linear_float(model, batches):
    config = PT2EConfig(targets=TARGETS, exclude=("lm_head",))
    converted, report = quantize_pt2e(model, config, batches[:1])
    assert "lm_head" not in report.converted
    assert ("lm_head", "excluded: kept in float on request") in report.skipped
    assert compiled.op_census(converted)["dequantize_per_channel"] == len(report.converted)


def test_outputs_match_float_and_eager_static(model, batches, pt2e):
    converted, _ = pt2e
    x = batches[0]
    with torch.no_grad():
        reference = model(x)[0]
        eager, _ = quantize_static(model, StaticConfig(targets=TARGETS), batches)
        # int8 Linears with 7-bit activations on a random tiny model: a few percent
        assert relative_error(converted(x)[0], reference) < 0.05
        assert relative_error(eager(x)[0], reference) < 0.05
        # the exported program is dynamic: another batch size and length run too
        assert converted(x[:1, :5])[0].shape == (1, 5, 64)


def test_input_model_is_untouched(model, batches, pt2e):
    assert model.blocks[0].attn.causal_mask.shape == (16, 16)
    assert type(model.lm_head) is nn.Linear


def test_export_ready_adds_one_mask_row_and_keeps_outputs(model, batches):
    ready = export_ready(model)
    assert ready is not model and ready.blocks[0].attn.causal_mask.shape == (17, 17)
    with torch.no_grad():
        torch.testing.assert_close(ready(batches[0])[0], model(batches[0])[0])
    other = nn.Linear(2, 2)
    assert export_ready(other) is other


def test_a_bert_exports_with_a_tokenizer_dict():
    bert = make_bert()
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 100, (2, 8), generator=g),
             "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    converted, report = quantize_pt2e(bert, PT2EConfig(), [batch])
    assert len(report.converted) == 6  # q, k, v, attention output, intermediate, output
    with torch.no_grad():
        out = converted(**batch)
        reference = bert(**batch).last_hidden_state
    assert relative_error(out[0], reference) < 0.05


def test_errors(model, batches, pt2e):
    with pytest.raises(TypeError, match=r"config is a StaticConfig: expected a PT2EConfig"):
        quantize_pt2e(model, StaticConfig(), batches)
    with pytest.raises(ValueError, match=r"batches is empty: calibration needs at least one"):
        quantize_pt2e(model, PT2EConfig(), [])
    with pytest.raises(ValueError, match=r"already holds quantize or observer nodes \(a PT2E "
                                         r"result\): quantize the float model"):
        quantize_pt2e(pt2e[0], PT2EConfig(), batches)
    from quantbook.methods import quantize_torchao_dynamic

    torchao_model, _ = quantize_torchao_dynamic(model, TorchaoDynamicConfig(targets=TARGETS))
    with pytest.raises(ValueError, match=r"already quantized \(by torchao\)"):
        quantize_pt2e(torchao_model, PT2EConfig(), batches)


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_a_model_that_does_not_export_gets_the_reason():
    with pytest.raises(ValueError, match=r"torch\.export could not capture this Branchy "
                                         r"\(.*\)\. PT2E quantizes a whole captured graph: "
                                         r"remove Python control flow"):
        quantize_pt2e(Branchy(), PT2EConfig(modules=("fc",)), [torch.randn(2, 4)])


def test_compile_needs_a_cpp_compiler():
    from torch._inductor import config

    message = (r"torch\.compile on the CPU needs a C\+\+ compiler at run time.*install one "
               r"\(apt-get install g\+\+")
    with config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        with pytest.raises(RuntimeError, match=message):
            compile_model(nn.Linear(2, 2))


def test_compile_model_errors():
    with pytest.raises(TypeError, match=r"model is a dict: expected a torch\.nn\.Module"):
        compile_model({})
    with pytest.raises(ValueError, match=r"dynamic='yes' is not supported: choose None, True "
                                         r"or False"):
        compile_model(nn.Linear(2, 2), dynamic="yes")
    wrapped = compile_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"model is already a CompiledModel: compile the model "
                                         r"inside it"):
        compile_model(wrapped)
    assert wrapped.first_call_s is None  # nothing compiled until the first call


def test_compiled_pt2e_runs_int8_kernels_and_matches_its_reference(model, batches, pt2e):
    """The one real compile of this file: inductor's x86 int8 passes on the PT2E graph."""
    from quantbook.explore_compiled import capture_code, kernel_census

    converted, _ = pt2e
    fast = compile_model(converted)
    x = batches[1]
    with torch.inference_mode(), capture_code() as codes:
        out = fast(x)[0]
        reference = converted(x)[0]
    census = kernel_census(codes)
    assert census["torch.ops.onednn.qlinear_pointwise.tensor"] >= 1  # int8 Linears
    assert fast.first_call_s > 0 and fast.config is model.config
    # 7-bit activations: the int8 kernels compute what the q/dq graph describes
    assert relative_error(out, reference) < 1e-3


def test_bench_configs_lists_the_compiled_rows(model):
    workload = Workload(name="tiny", model=model, metric="loss", evaluate=lambda m: 0.0,
                        linear_targets=TARGETS)
    configs = bench_configs(workload)
    assert list(configs) == ["torchao int8 dynamic, compiled", "PT2E static int8, compiled"]
    assert configs["PT2E static int8, compiled"] == PT2EConfig(targets=TARGETS)
    assert configs["torchao int8 dynamic, compiled"] == TorchaoDynamicConfig(targets=TARGETS)
