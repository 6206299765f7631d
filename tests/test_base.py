"""Tests for quantbook.methods.base: configs, module selection, the copy, the check, the report.

The selection core is tested on hand-built models whose every module's fate is known in advance.
"""

import dataclasses
import warnings

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook.methods.base import (
    EXCLUDED_REASON,
    MHA_REASON,
    MethodConfig,
    QuantReport,
    Selection,
    finish,
    float_leaf_modules,
    mha_members,
    quantized_kind,
    select,
    swap_modules,
)
from quantbook.methods.dynamic import DynamicConfig
from quantbook.methods.packed import PackedLinear
from quantbook.methods.weight_only import WeightOnlyConfig
from quantbook.quiet import silence_known_noise
from quantbook.targets import list_targets

with warnings.catch_warnings():
    silence_known_noise()
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import QuantWrapper, default_qconfig


class Mixed(nn.Module):
    """One module of each fate: converted, excluded, wrong type, inside MultiheadAttention."""

    def __init__(self):
        super().__init__()
        self.keep = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)


ALL_FATES = ("keep", "fc", "norm", "mha.out_proj")


# ------------------------------------------------------------------ QuantReport


def test_summary_counts_and_abbreviates_names():
    report = QuantReport(
        label="weight-only int4 group32",
        family="weight-only (quantbook)",
        converted=tuple(f"layer.{i}" for i in range(6)),
        skipped=(("conv", "a Conv2d: weight-only int4 group32 converts Linear or Embedding"),),
        float_modules=("ln",),
        float_ops=("softmax", "GELU"),
    )
    assert report.summary(max_names=2).splitlines() == [
        "weight-only int4 group32: 6 modules converted",
        "  converted: layer.0, layer.1, ... (+4 more)",
        "  skipped (1): conv (a Conv2d: weight-only int4 group32 converts Linear or Embedding)",
        "  float (1): ln",
        "  float operations between them: softmax, GELU",
    ]


def test_summary_of_an_empty_report_has_one_line():
    assert QuantReport("m", "f", converted=()).summary() == "m: 0 modules converted"


def test_report_is_frozen_and_has_no_method_field():
    report = QuantReport("m", "f", converted=("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.label = "other"
    assert [f.name for f in dataclasses.fields(QuantReport)] == [
        "label", "family", "converted", "skipped", "float_modules", "float_ops"]


# ------------------------------------------------------------------ MethodConfig


def test_selection_fields_are_normalized_to_tuples_without_repeats():
    config = WeightOnlyConfig(targets=["ffn", "head", "ffn"], exclude="lm_head",
                              modules=["a", "b", "a"])
    assert config.targets == ("ffn", "head")
    assert config.exclude == ("lm_head",)
    assert config.modules == ("a", "b")
    assert WeightOnlyConfig(targets="ffn").targets == ("ffn",)
    assert WeightOnlyConfig().modules is None


def test_configs_built_from_lists_and_tuples_are_equal_and_hashable():
    # a sweep caches its models by config: a list and a tuple must give the same key
    a = DynamicConfig(targets=["attention"], exclude=["blocks.0.attn.q_proj"])
    b = DynamicConfig(targets=("attention",), exclude=("blocks.0.attn.q_proj",))
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1


def test_configs_are_frozen_keyword_only_and_base_has_no_label():
    config = WeightOnlyConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 3
    with pytest.raises(TypeError):
        MethodConfig(("ffn",))  # selection fields are keyword-only
    with pytest.raises(NotImplementedError):
        MethodConfig().label  # noqa: B018
    assert MethodConfig().groups() == ("attention", "ffn")
    assert DynamicConfig(embeddings_bits=8).groups() == ("attention", "ffn", "embeddings")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(targets=("mlp",)), ValueError, r"names an unknown group 'mlp': choose from attention"),
    (dict(targets=()), ValueError, r"is empty: choose at least one of attention, ffn"),
    (dict(targets=("ffn", 3)), TypeError, r"holds a int: expected group names"),
    (dict(exclude=[1]), TypeError, r"exclude=\[1\] holds \[1\]: expected module names"),
    (dict(exclude=("",)), TypeError, r"exclude=\('',\) holds \[''\]: expected module names "
                                     r"\(non-empty str\)"),
    (dict(exclude=None), TypeError, r"exclude=None is not supported: pass a tuple of module"),
    (dict(modules=()), ValueError, r"modules=\(\) is empty: name at least one module, or pass "
                                   r"modules=None to use targets"),
    (dict(modules=[]), ValueError, r"is empty: name at least one module"),
    (dict(modules=5), TypeError, r"modules=5 is not supported: pass a tuple of module names"),
])
def test_bad_selection_fields(kwargs, error, match):
    with pytest.raises(error, match=match):
        WeightOnlyConfig(**kwargs)
    with pytest.raises(error, match=match):
        DynamicConfig(**kwargs)  # the same check for every method


@pytest.mark.parametrize("targets, match", [
    (("mlp",), r"targets=\('mlp',\) names an unknown group 'mlp'"),
    ((), r"targets=\(\) is empty"),
    (None, r"targets=None is not supported"),
])
def test_target_errors_name_the_targets_field(targets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        WeightOnlyConfig(targets=targets)


def test_a_module_name_in_targets_points_to_modules():
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn\.q_proj' looks like a module name.*"
                                         r"modules=\('blocks\.0\.attn\.q_proj',\)"):
        WeightOnlyConfig(targets=("blocks.0.attn.q_proj",))


# ------------------------------------------------------------------ select


def test_one_reason_per_skipped_module():
    model = Mixed()
    config = DynamicConfig(modules=ALL_FATES, exclude=("keep",))
    selection = select(model, config)
    assert selection == Selection(
        chosen=("fc",),
        skipped=(("keep", EXCLUDED_REASON),
                 ("norm", "a LayerNorm: dynamic int8 per-tensor converts Linear"),
                 ("mha.out_proj", MHA_REASON)))
    assert EXCLUDED_REASON == "excluded: kept in float on request"
    assert "MultiheadAttention" in MHA_REASON and "out_proj.weight" in MHA_REASON


def test_targets_select_the_groups_in_model_order(gpt):
    targets = list_targets(gpt)
    selection = select(gpt, WeightOnlyConfig(targets=("ffn", "head")))
    assert selection.chosen == tuple(targets["ffn"] + targets["head"])
    assert selection.skipped == ()
    embeddings = select(gpt, DynamicConfig(embeddings_bits=4, targets=("head",)))
    assert embeddings.chosen == ("lm_head", "tok_emb", "pos_emb")


def test_accept_gives_a_method_its_own_reasons():
    model = Mixed()
    config = DynamicConfig(modules=("keep", "fc"))
    selection = select(model, config, accept=lambda name, _m: "too small" if name == "fc"
                       else None)
    assert selection == Selection(("keep",), (("fc", "too small"),))
    with pytest.raises(ValueError, match=r"boom"):
        select(model, config, accept=lambda name, _m: (_ for _ in ()).throw(ValueError("boom")))


def test_nothing_to_convert_is_refused_with_the_reasons():
    model = Mixed()
    with pytest.raises(ValueError, match=r"dynamic int8 per-tensor would convert no module "
                                         r"\(norm: a LayerNorm: .*; mha\.out_proj: inside "
                                         r"nn\.MultiheadAttention.*\)\. Quantizing nothing leaves "
                                         r"the model float and unchanged.*list_targets"):
        select(model, DynamicConfig(modules=("norm", "mha.out_proj")))
    with pytest.raises(ValueError, match=r"would convert no module \(keep: excluded"):
        select(model, DynamicConfig(modules=("keep",), exclude=("keep",)))


def test_unknown_names_are_refused_with_examples():
    model = Mixed()
    with pytest.raises(ValueError, match=r"modules names \['nope'\], which are not submodules of "
                                         r"this Mixed: use names from dict\(model\.named_modules"
                                         r"\(\)\), e\.g\. \['keep', 'fc'\]"):
        select(model, DynamicConfig(modules=("fc", "nope")))
    with pytest.raises(ValueError, match=r"exclude names \['lm_haed'\]"):
        select(make_gpt(), DynamicConfig(exclude=("lm_haed",)))


def test_excluding_a_parent_keeps_its_children_float(gpt):
    selection = select(gpt, DynamicConfig(exclude=("blocks.0",)))
    assert not [name for name in selection.chosen if name.startswith("blocks.0.")]


def test_an_already_quantized_module_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model[1] = PackedLinear.from_linear(model[1], WeightOnlyConfig().spec())
    with pytest.raises(ValueError, match=r"module '1' is already quantized \(a PackedLinear\): "
                                         r"quantize the float model, not a quantized copy"):
        select(model, DynamicConfig(modules=("0", "1")))


def _torchao_linear() -> nn.Module:
    with warnings.catch_warnings():
        silence_known_noise()
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    model = nn.Sequential(nn.Linear(16, 16))
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    return model[0]


def test_quantized_kind_names_each_kind_of_quantized_module():
    with warnings.catch_warnings():
        silence_known_noise()
        dynamic = nnqd.Linear(8, 8)
        static = nnq.Linear(8, 8)
    prepared = nn.Linear(8, 8)
    prepared.qconfig = default_qconfig
    assert quantized_kind(nn.Linear(8, 8)) is None
    assert quantized_kind(nn.LayerNorm(8)) is None
    assert quantized_kind(PackedLinear.from_linear(nn.Linear(8, 8), WeightOnlyConfig().spec())
                          ) == "a PackedLinear"
    assert quantized_kind(prepared) == ("prepared for eager static quantization "
                                        "(it carries a qconfig)")
    assert quantized_kind(QuantWrapper(nn.Linear(8, 8))) == (
        "a QuantWrapper from eager static quantization")
    assert quantized_kind(dynamic) is not None and quantized_kind(static) is not None
    assert quantized_kind(_torchao_linear()) == (
        "its weight is a Int8Tensor (a torchao quantized tensor)")


def test_quantized_kind_names_eager_modules_by_their_printed_name():
    with warnings.catch_warnings():
        silence_known_noise()
        assert quantized_kind(nnqd.Linear(8, 8)) == "a DynamicQuantizedLinear"
        assert quantized_kind(nnq.Linear(8, 8)) == "a QuantizedLinear"


def test_mha_members_lists_everything_inside_multihead_attention():
    assert mha_members(Mixed()) == {"mha.out_proj"}
    assert mha_members(nn.MultiheadAttention(8, 2)) == {"out_proj"}
    assert mha_members(nn.Linear(2, 2)) == set()


# ------------------------------------------------------------------ swap_modules, finish


def _chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4)))


def test_swap_modules_builds_from_the_original_into_a_copy():
    model = _chain()
    seen = []

    def build(name, module):
        seen.append((name, module is model.get_submodule(name)))
        return nn.Identity()

    copied = swap_modules(model, ["0", "2.0"], build)
    assert seen == [("0", True), ("2.0", True)]
    assert isinstance(copied[0], nn.Identity) and isinstance(copied[2][0], nn.Identity)
    assert isinstance(model[0], nn.Linear) and isinstance(model[2][0], nn.Linear)


def test_swap_modules_shares_untouched_tensors_only_on_request():
    model = _chain()
    own = swap_modules(model, ["0"], lambda _n, _m: nn.Identity())
    shared = swap_modules(model, ["0"], lambda _n, _m: nn.Identity(), share=True)
    assert own[2][0].weight is not model[2][0].weight
    assert own[2][0].weight.data_ptr() != model[2][0].weight.data_ptr()
    assert torch.equal(own[2][0].weight, model[2][0].weight)
    assert shared[2][0].weight is model[2][0].weight
    assert shared[2] is not model[2]  # the modules are still copies


def test_finish_reports_what_really_changed_and_sets_eval_mode():
    model = _chain()
    config = DynamicConfig(modules=("0", "2.0"))
    quantized = swap_modules(model, ["0"], lambda _n, _m: nn.Identity()).train()
    selection = Selection(("0", "2.0"), (("1", "a ReLU"),))
    result, report = finish(quantized, config, selection, lambda m: isinstance(m, nn.Identity),
                            float_ops=("GELU",))
    assert result is quantized and not any(m.training for m in result.modules())
    assert report == QuantReport(
        label="dynamic int8 per-tensor", family="dynamic (eager)", converted=("0",),
        skipped=(("1", "a ReLU"), ("2.0", "the library left it as a Linear")),
        float_modules=("2.0",), float_ops=("GELU",))


def test_finish_refuses_a_model_where_nothing_changed():
    model = _chain()
    with pytest.raises(ValueError, match=r"dynamic int8 per-tensor converted no module \(0: the "
                                         r"library left it as a Linear\): the model would stay "
                                         r"float; report this model and config as a bug"):
        finish(model, DynamicConfig(modules=("0",)), Selection(("0",), ()), lambda m: False)


def test_float_leaf_modules_lists_direct_parameter_owners():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(nn.init.zeros_(nn.Linear(2, 2).weight))
            self.body = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.LayerNorm(2))

    model = WithTable()
    assert float_leaf_modules(model, exclude=()) == ("", "body.0", "body.2")
    assert float_leaf_modules(model, exclude=["body.0"]) == ("", "body.2")
    assert float_leaf_modules(model, exclude=["body"]) == ("",)  # and everything inside it
