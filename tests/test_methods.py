"""The promises every method of quantbook.methods keeps, checked on every method at once.

One shape (``quantize_<method>(model, config[, batches]) -> (copy, QuantReport)``), one entry
point (:func:`quantbook.methods.quantize`), an eval-mode copy with the input untouched, and the
same refusals at the boundary: a model that is not float32 / finite / on a usable device, a
model that is already quantized, calibration batches that cannot be right.
"""

import copy
import inspect
import re
import warnings

import pytest
import torch
from conftest import FakeCudaModel, make_gpt
from torch import nn

import quantbook.methods as methods
from quantbook.methods import (
    METHODS,
    DynamicConfig,
    MethodConfig,
    QuantReport,
    StaticConfig,
    TorchaoDynamicConfig,
    TorchaoStaticConfig,
    TorchaoWeightOnlyConfig,
    WeightOnlyConfig,
    prepare_static,
    quantize,
    quantize_dynamic,
    quantize_static,
    quantize_torchao_dynamic,
    quantize_torchao_static,
    quantize_torchao_weight_only,
    quantize_weight_only,
)
from quantbook.quiet import silence_known_noise

# (function, config, calibrates): one of each method, on the tiny GPT's attention and FFN
CASES = [
    pytest.param(quantize_weight_only, WeightOnlyConfig(bits=4), False, id="weight_only"),
    pytest.param(quantize_torchao_weight_only, TorchaoWeightOnlyConfig(), False,
                 id="torchao_weight_only"),
    pytest.param(quantize_dynamic, DynamicConfig(), False, id="dynamic"),
    pytest.param(quantize_torchao_dynamic, TorchaoDynamicConfig(), False, id="torchao_dynamic"),
    pytest.param(quantize_static, StaticConfig(observer="minmax"), True, id="static"),
    pytest.param(quantize_torchao_static, TorchaoStaticConfig(), True, id="torchao_static"),
]
CPU_ONLY = [c for c in CASES if c.id in ("weight_only", "dynamic", "static")]


def call(function, model, config, calibrates, batches):
    return function(model, config, batches) if calibrates else function(model, config)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(7))


# ------------------------------------------------------------------ one shape


def test_every_config_has_its_method_and_one_signature():
    exported = [getattr(methods, name) for name in methods.__all__]
    configs = {c for c in exported if isinstance(c, type) and issubclass(c, MethodConfig)}
    assert configs - {MethodConfig} == set(METHODS)  # no method without a dispatch entry
    for config_type, (function, calibrates) in METHODS.items():
        names = list(inspect.signature(function).parameters)
        expected = ["model", "config", "batches"] if calibrates else ["model", "config"]
        assert names[: len(expected)] == expected, function
        assert function.__name__.startswith("quantize_")
        assert function.__module__ == config_type.__module__  # a config maps to its own method
        assert isinstance(config_type().label, str) and config_type.family


@pytest.mark.parametrize("function, config, calibrates", CASES)
def test_returns_an_eval_copy_and_leaves_the_input_untouched(function, config, calibrates,
                                                             batches, ids):
    model = make_gpt().train()
    state = copy.deepcopy(model.state_dict())
    kinds = {name: type(m) for name, m in model.named_modules()}
    with torch.no_grad():
        before = model(ids)[0]

    quantized, report = call(function, model, config, calibrates, batches)

    assert quantized is not model and isinstance(report, QuantReport)
    assert not any(m.training for m in quantized.modules())
    assert all(m.training for m in model.modules())  # not even switched to eval
    assert {name: type(m) for name, m in model.named_modules()} == kinds
    assert list(model.state_dict()) == list(state)
    assert all(type(v) is torch.Tensor and torch.equal(state[k], v)
               for k, v in model.state_dict().items())
    for module in model.modules():
        assert getattr(module, "qconfig", None) is None
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert report.label == config.label and report.family == config.family
    assert len(report.converted) == 12  # 2 layers x (q, k, v, out, fc_in, fc_out)
    with torch.no_grad():
        assert torch.equal(model(ids)[0], before)
        assert quantized(ids)[0].shape == before.shape


@pytest.mark.parametrize("function, config, calibrates", CASES)
def test_quantize_dispatches_on_the_config_type(function, config, calibrates, gpt, batches,
                                                ids):
    direct, direct_report = call(function, gpt, config, calibrates, batches)
    through, through_report = quantize(gpt, config, batches)
    assert through_report == direct_report
    assert type(through.blocks[0].mlp.fc_in) is type(direct.blocks[0].mlp.fc_in)
    with torch.no_grad():
        assert torch.equal(through(ids)[0], direct(ids)[0])


def test_quantize_refuses_other_configs_and_missing_batches(gpt):
    with pytest.raises(TypeError, match=r"config is a dict: expected one of WeightOnlyConfig, "
                                        r"TorchaoWeightOnlyConfig, DynamicConfig"):
        quantize(gpt, {"bits": 4})
    with pytest.raises(TypeError, match=r"config is a MethodConfig: expected one of"):
        quantize(gpt, MethodConfig())
    with pytest.raises(TypeError, match=r"config is a GPT: expected one of"):
        quantize(StaticConfig(), gpt)
    for config in (StaticConfig(), TorchaoStaticConfig()):
        with pytest.raises(ValueError, match=re.escape(config.label) + r" calibrates on data: "
                                             r"pass batches, e\.g\. quantbook\.data\."):
            quantize(gpt, config)


def test_methods_refuse_each_others_configs(gpt, batches):
    for function, config, calibrates in [c.values for c in CASES]:
        for other in (WeightOnlyConfig(), DynamicConfig(), TorchaoStaticConfig()):
            if type(other) is type(config):
                continue
            with pytest.raises(TypeError, match=rf"config is a {type(other).__name__}: expected "
                                                rf"a {type(config).__name__}"):
                call(function, gpt, other, calibrates, batches)


# ------------------------------------------------------------------ already quantized


@pytest.fixture(scope="module")
def quantized_models(gpt, batches):
    with warnings.catch_warnings():
        silence_known_noise()
        return {
            "packed": quantize_weight_only(gpt)[0],
            "eager dynamic": quantize_dynamic(gpt)[0],
            "prepared static": prepare_static(gpt, StaticConfig(observer="minmax")),
            "converted static": quantize_static(gpt, StaticConfig(observer="minmax"),
                                                batches)[0],
            "torchao": quantize_torchao_dynamic(gpt)[0],
            "torchao weight-only": quantize_torchao_weight_only(
                gpt, TorchaoWeightOnlyConfig(bits=4, granularity="group", group_size=16))[0],
        }


REFUSALS = {
    "packed": r"module 'blocks\.0\.attn\.q_proj' is already quantized \(a PackedLinear\)",
    "eager dynamic": r"module 'blocks\.0\.attn\.q_proj' is already quantized \(a ",
    "prepared static": r"already quantized \(prepared for eager static quantization",
    "converted static": r"already quantized \(a QuantWrapper from eager static quantization\)",
    "torchao": r"parameter 'blocks\.0\.attn\.q_proj\.weight' is a Int8Tensor, so this model is "
               r"already quantized \(by torchao\)",
    "torchao weight-only": r"is a IntxUnpackedToInt8Tensor, so this model is already quantized",
}


@pytest.mark.parametrize("kind", list(REFUSALS))
@pytest.mark.parametrize("function, config, calibrates", CASES)
def test_every_method_refuses_an_already_quantized_model(function, config, calibrates, kind,
                                                         quantized_models, batches):
    with pytest.raises(ValueError, match=REFUSALS[kind] + r".*quantize the float model"):
        call(function, quantized_models[kind], config, calibrates, batches)


# ------------------------------------------------------------------ the model at the boundary


def half_model():
    return make_gpt().half()


def nan_model():
    model = make_gpt()
    with torch.no_grad():
        model.blocks[1].mlp.fc_out.weight[3, 4] = float("inf")
        model.blocks[1].mlp.fc_out.weight[0, 0] = float("nan")
    return model


def meta_model():
    return make_gpt().to("meta")


BAD_MODELS = [
    pytest.param(half_model, ValueError,
                 r"parameter 'tok_emb\.weight' is torch\.float16, and quantization starts from "
                 r"float32 weights.*call model\.float\(\) first", id="float16"),
    pytest.param(lambda: make_gpt().to(torch.bfloat16), ValueError,
                 r"is torch\.bfloat16.*call model\.float\(\)", id="bfloat16"),
    pytest.param(nan_model, ValueError,
                 r"parameter 'blocks\.1\.mlp\.fc_out\.weight' holds 2 NaN or inf values", id="nan"),
    pytest.param(meta_model, ValueError,
                 r"the model has tensors on the meta device \(shapes without data\); load its "
                 r"weights first", id="meta"),
    pytest.param(lambda: make_gpt().state_dict(), TypeError,
                 r"model is a OrderedDict: expected a torch\.nn\.Module \(pass the model itself",
                 id="state_dict"),
]


@pytest.mark.parametrize("make_model, error, match", BAD_MODELS)
@pytest.mark.parametrize("function, config, calibrates", CASES)
def test_every_method_checks_the_model(function, config, calibrates, make_model, error, match,
                                       batches):
    with pytest.raises(error, match=rf"(^{re.escape(config.label)}: )?" + match):
        call(function, make_model(), config, calibrates, batches)


@pytest.mark.parametrize("function, config, calibrates", CPU_ONLY)
def test_cpu_only_methods_refuse_a_cuda_model(function, config, calibrates):
    config = type(config)(modules=("fc",))
    batches = [torch.zeros(1, 8, dtype=torch.long)]
    with pytest.raises(ValueError, match=re.escape(config.label) + r": the model has tensors on "
                                         r"cuda, but this method runs on cpu only: quantize "
                                         r"model\.cpu\(\); on a GPU use a torchao method"):
        call(function, FakeCudaModel(), config, calibrates, batches)


def test_torchao_methods_let_a_cuda_model_through_the_check():
    quantized, report = quantize_torchao_dynamic(FakeCudaModel(),
                                                 TorchaoDynamicConfig(modules=("fc",)))
    assert report.converted == ("fc",)
    assert type(quantized.fc.weight).__name__ == "Int8Tensor"


# ------------------------------------------------------------------ calibration batches


BAD_BATCHES = [  # make(good batches) -> the bad argument; a bad batch comes after good ones
    pytest.param(lambda good: [], ValueError,
                 r"batches is empty: calibration needs at least one batch", id="empty"),
    pytest.param(lambda good: good[0], TypeError,
                 r"batches is a single Tensor: pass a list of batches, e\.g\. \[batches\]",
                 id="one-tensor"),
    pytest.param(lambda good: [*good, torch.zeros(16, dtype=torch.long)], ValueError,
                 r"batches\[3\] has shape \(16,\): expected a non-empty \(batch, tokens\) "
                 r"matrix; add the batch dimension with ids\[None\]", id="1-D"),
    pytest.param(lambda good: [*good, torch.zeros(2, 16)], TypeError,
                 r"batches\[3\] holds torch\.float32 token ids: expected integers", id="floats"),
    pytest.param(lambda good: [*good, torch.full((2, 16), 64)], ValueError,
                 r"batches\[3\] holds token ids 64\.\.64, outside the model's vocabulary "
                 r"0\.\.63: tokenize with this model's own tokenizer", id="vocab"),
    pytest.param(lambda good: [*good, torch.zeros(2, 17, dtype=torch.long)], ValueError,
                 r"batches\[3\] has 17 tokens per sequence, more than the model's 16 positions",
                 id="too-long"),
    pytest.param(lambda good: [*good, {"attention_mask": torch.ones(2, 16)}], TypeError,
                 r"batches\[3\] is a dict: expected .*a dict with 'input_ids'", id="no-ids"),
]


@pytest.mark.parametrize("make, error, match", BAD_BATCHES)
@pytest.mark.parametrize("function, config", [
    pytest.param(quantize_static, StaticConfig(observer="minmax"), id="static"),
    pytest.param(quantize_torchao_static, TorchaoStaticConfig(), id="torchao_static")])
def test_calibrating_methods_check_the_batches(function, config, make, error, match, gpt,
                                               batches):
    with pytest.raises(error, match=match):
        function(gpt, config, make(batches))


def test_a_generator_of_batches_is_accepted_by_torchao_static(gpt, batches):
    listed, _ = quantize_torchao_static(gpt, TorchaoStaticConfig(), batches)
    generated, _ = quantize_torchao_static(gpt, TorchaoStaticConfig(), (b for b in batches))
    ids = batches[0][:1]
    with torch.no_grad():
        assert torch.equal(listed(ids)[0], generated(ids)[0])


def test_non_gpt_models_get_the_structural_checks_only():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))  # float features in
    quantized, report = quantize_static(model, StaticConfig(modules=("2",)),
                                        [torch.randn(2, 8)])
    assert report.converted == ("2",)
    with pytest.raises(ValueError, match=r"batches is empty"):
        quantize_static(model, StaticConfig(modules=("2",)), [])
