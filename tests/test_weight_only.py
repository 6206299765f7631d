"""Tests for quantbook.methods.weight_only against affine.fake_quantize and hand-counted bytes."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbook import affine
from quantbook.gpt import GPT, GPTConfig
from quantbook.measure import tensor_bytes
from quantbook.methods.dynamic import DynamicConfig
from quantbook.methods.packed import PackedEmbedding, PackedLinear
from quantbook.methods.weight_only import (
    WeightOnlyConfig,
    converted_weight_bytes,
    predicted_size_bytes,
    quantize_weight_only,
)
from quantbook.targets import resolve_targets

ALL_GROUPS = ("attention", "ffn", "embeddings", "head")


def reference_weight(weight, spec):
    """The fake-quantized weight through quantbook.affine (unpacked, int32 codes)."""
    weight = weight.detach()
    return affine.fake_quantize(weight, affine.choose_qparams(weight, spec))


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    settings_ = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32) | overrides
    return GPT(GPTConfig(**settings_)).eval()


# ------------------------------------------------------------------ the config


@pytest.mark.parametrize("kwargs, label", [
    (dict(), "weight-only int4 per-channel"),
    (dict(bits=8, granularity="tensor"), "weight-only int8 per-tensor"),
    (dict(bits=4, granularity="group", group_size=32), "weight-only int4 group32"),
    (dict(bits=3, scheme="asymmetric"), "weight-only int3 per-channel asymmetric"),
])
def test_labels(kwargs, label):
    config = WeightOnlyConfig(**kwargs)
    assert config.label == label and config.family == "weight-only (quantbook)"
    assert config.spec() == affine.QuantSpec(bits=config.bits, scheme=config.scheme,
                                             granularity=config.granularity, axis=0,
                                             group_size=config.group_size)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(bits=1), ValueError, r"bits=1 is not supported: choose 2\.\.8"),
    (dict(bits=9), ValueError, r"bits=9 is not supported: choose 2\.\.8"),
    (dict(bits=True), TypeError, r"bits=True must be an int"),
    (dict(bits=4.0), TypeError, r"bits=4\.0 must be an int"),
    (dict(scheme="sym"), ValueError, r"scheme='sym' is unknown"),
    (dict(granularity="row"), ValueError, r"granularity='row' is unknown"),
    (dict(granularity="group"), ValueError, r"group_size=None is invalid for granularity='group'"),
    (dict(granularity="group", group_size=0), ValueError, r"group_size=0 is invalid"),
    (dict(group_size=32), ValueError, r"group_size=32 is only used with granularity='group'"),
    (dict(range_method="max"), ValueError, r"range_method='max' is unknown"),
    (dict(targets=("mlp",)), ValueError, r"names an unknown group 'mlp': choose from attention"),
    (dict(targets=()), ValueError, r"is empty: choose at least one of attention"),
])
def test_bad_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        WeightOnlyConfig(**kwargs)


def test_config_normalizes_targets_and_rejects_other_configs():
    assert WeightOnlyConfig(targets="ffn").targets == ("ffn",)
    assert WeightOnlyConfig(targets=["ffn", "head"]).targets == ("ffn", "head")
    with pytest.raises(TypeError, match="config is a dict: expected a WeightOnlyConfig"):
        quantize_weight_only(tiny_gpt(), {"bits": 4})
    with pytest.raises(TypeError, match="config is a DynamicConfig: expected a WeightOnlyConfig"):
        quantize_weight_only(tiny_gpt(), DynamicConfig())


# ------------------------------------------------------------------ quantize_weight_only


@pytest.mark.parametrize("targets", [("attention", "ffn"), ALL_GROUPS, ("head",)])
def test_converts_exactly_the_targets_of_a_copy(targets):
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    quantized, report = quantize_weight_only(model, WeightOnlyConfig(bits=8, targets=targets))

    expected = [name for names in resolve_targets(model, targets).values() for name in names]
    assert report.converted == tuple(expected)
    assert report.skipped == ()
    assert report.label == "weight-only int8 per-channel"
    assert report.family == "weight-only (quantbook)"
    for name, module in quantized.named_modules():
        assert isinstance(module, PackedLinear | PackedEmbedding) == (name in expected)
        assert (name in report.float_modules) == (
            name not in expected and any(True for _ in module.parameters(recurse=False)))
    # the input model is untouched
    assert all(isinstance(model.get_submodule(n), nn.Linear | nn.Embedding) for n in expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # 8-bit per channel barely moves the logits
    ids = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(quantized(ids)[0], model(ids)[0], rtol=0, atol=0.02)
    assert not quantized.training


def test_quantized_gpt_equals_the_gpt_with_fake_quantized_weights():
    model = tiny_gpt(seed=3)
    config = WeightOnlyConfig(bits=4, granularity="group", group_size=16, targets=ALL_GROUPS)
    quantized, report = quantize_weight_only(model, config)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in report.converted:
            weight = reference.get_submodule(name).weight
            weight.copy_(reference_weight(weight, config.spec()))
    ids = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(quantized(ids)[0], reference(ids)[0], rtol=0, atol=1e-5)
    state = quantized.state_dict()
    n_weights = sum(model.get_submodule(name).weight.numel() for name in report.converted)
    assert sum(state[f"{name}.packed"].numel() for name in report.converted) == n_weights // 2


def test_quantize_weight_only_on_minilm_attention():
    from quantbook.minilm import load_minilm

    model, tokenizer = load_minilm()
    quantized, report = quantize_weight_only(model,
                                             WeightOnlyConfig(bits=8, targets=("attention",)))
    assert report.converted == tuple(resolve_targets(model, ["attention"])["attention"])
    assert len(report.converted) == 24  # 6 layers x (query, key, value, output.dense)
    assert isinstance(quantized.encoder.layer[0].attention.self.query, PackedLinear)
    assert isinstance(model.encoder.layer[0].attention.self.query, nn.Linear)
    assert "encoder.layer.0.intermediate.dense" in report.float_modules
    batch = tokenizer(["Quantization stores weights in fewer bits."], return_tensors="pt")
    with torch.no_grad():
        ours, theirs = quantized(**batch).last_hidden_state, model(**batch).last_hidden_state
    assert F.cosine_similarity(ours, theirs, dim=-1).min() > 0.999


def test_modules_and_exclude_work_on_any_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), nn.LayerNorm(4))
    config = WeightOnlyConfig(bits=8, modules=("0", "2", "3"), exclude=("2",))
    quantized, report = quantize_weight_only(model, config)
    assert report.converted == ("0",)
    assert report.skipped == (("2", "excluded: kept in float on request"),
                              ("3", "a LayerNorm: weight-only int8 per-channel converts Linear "
                                    "or Embedding"))
    assert type(quantized[0]) is PackedLinear and type(quantized[2]) is nn.Linear
    x = torch.randn(3, 16)
    expected = F.linear(x, reference_weight(model[0].weight, config.spec()), model[0].bias)
    torch.testing.assert_close(quantized[0](x), expected, rtol=0, atol=1e-6)


def test_quantizing_twice_raises():
    quantized, _ = quantize_weight_only(tiny_gpt(), WeightOnlyConfig(targets=("ffn",)))
    with pytest.raises(ValueError, match=r"module 'blocks\.0\.mlp\.fc_in' is already quantized "
                                         r"\(a PackedLinear\): quantize the float model"):
        quantize_weight_only(quantized, WeightOnlyConfig(targets=("ffn",)))
    # other groups of the same copy are still float, and can be quantized on top
    stacked, report = quantize_weight_only(quantized, WeightOnlyConfig(targets=("attention",)))
    assert len(report.converted) == 8 and type(stacked.blocks[0].mlp.fc_in) is PackedLinear


def test_nothing_converted_raises():
    model = tiny_gpt()
    for name in ("tok_emb", "pos_emb"):
        model.get_submodule(name).max_norm = 1.0
    with pytest.raises(ValueError, match=r"weight-only int4 per-channel would convert no module "
                                         r"\(tok_emb: max_norm=1\.0 renormalizes the table at "
                                         r"lookup; pos_emb: max_norm=1\.0"):
        quantize_weight_only(model, WeightOnlyConfig(targets=("embeddings",)))


def test_group_size_not_dividing_names_the_module():
    config = WeightOnlyConfig(granularity="group", group_size=24)
    with pytest.raises(ValueError, match=r"group_size=24 does not divide the row length of module "
                                         r"'blocks\.0\.attn\.q_proj' \(32\): choose a divisor of "
                                         r"32, e\.g\. \[4, 8, 16, 32\]"):
        quantize_weight_only(tiny_gpt(), config)
    # the FFN's second layer reads the 128 outputs of the first (divisors of 128 nearest 48:
    # 32 and 64, 16 away, then 16 and 8); embeddings group along their rows
    with pytest.raises(ValueError, match=r"'blocks\.0\.mlp\.fc_out' \(128\): choose a divisor "
                                         r"of 128, e\.g\. \[8, 16, 32, 64\]"):
        quantize_weight_only(tiny_gpt(), WeightOnlyConfig(
            granularity="group", group_size=48, modules=("blocks.0.mlp.fc_out",)))
    with pytest.raises(ValueError, match=r"row length of module 'tok_emb' \(32\)"):
        quantize_weight_only(tiny_gpt(), WeightOnlyConfig(granularity="group", group_size=12,
                                                          targets=("embeddings",)))


def test_no_warnings_while_quantizing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_weight_only(tiny_gpt(), WeightOnlyConfig(targets=ALL_GROUPS))


# ------------------------------------------------------------------ the cache of a sweep


def test_a_cache_shares_packed_modules_and_float_tensors():
    model = tiny_gpt()
    cache = {}
    config = WeightOnlyConfig(targets=("attention", "ffn"))
    first, report = quantize_weight_only(model, config, cache=cache)
    again, _ = quantize_weight_only(model, config, cache=cache)
    ffn_only, _ = quantize_weight_only(model, WeightOnlyConfig(targets=("ffn",)), cache=cache)
    assert set(cache) == {(model.get_submodule(name), config.spec(), False)
                          for name in report.converted}
    assert again.blocks[0].attn.q_proj is first.blocks[0].attn.q_proj
    assert ffn_only.blocks[1].mlp.fc_out is first.blocks[1].mlp.fc_out
    assert first.ln_f.weight is model.ln_f.weight  # float tensors shared, not copied
    assert first.lm_head.weight is model.lm_head.weight
    plain, _ = quantize_weight_only(model, config)
    assert plain.ln_f.weight is not model.ln_f.weight
    ids = torch.randint(0, 40, (2, 16))
    assert torch.equal(first(ids)[0], plain(ids)[0])
    eight = WeightOnlyConfig(bits=8)  # another spec: packed anew
    assert quantize_weight_only(model, eight, cache=cache)[0].blocks[0].attn.q_proj is not (
        first.blocks[0].attn.q_proj)


def test_a_cache_filled_by_another_model_is_not_reused():
    cache = {}
    quantize_weight_only(tiny_gpt(seed=0), WeightOnlyConfig(), cache=cache)
    other = tiny_gpt(seed=1)
    expected, _ = quantize_weight_only(other, WeightOnlyConfig())
    try:
        got, _ = quantize_weight_only(other, WeightOnlyConfig(), cache=cache)
    except ValueError as error:  # refusing is a fix too
        assert "cache" in str(error)
        return
    assert torch.equal(got.blocks[0].attn.q_proj.weight, expected.blocks[0].attn.q_proj.weight)


def test_a_cache_that_is_not_a_dict_is_refused():
    with pytest.raises(TypeError, match=r"cache is a list: pass a dict \(or None\)"):
        quantize_weight_only(tiny_gpt(), WeightOnlyConfig(), cache=[])


# ------------------------------------------------------------------ predicted bytes


@pytest.mark.parametrize("config", [
    WeightOnlyConfig(bits=4),
    WeightOnlyConfig(bits=3, scheme="asymmetric", granularity="group", group_size=16,
                     targets=ALL_GROUPS),
    WeightOnlyConfig(bits=8, granularity="tensor", targets=("head", "embeddings")),
    WeightOnlyConfig(bits=2, modules=("blocks.1.mlp.fc_out",)),
])
def test_predicted_size_is_what_the_quantized_copy_stores(config):
    model = tiny_gpt()
    quantized, _ = quantize_weight_only(model, config)
    assert predicted_size_bytes(model, config) == tensor_bytes(quantized)
    assert predicted_size_bytes(model, config) < tensor_bytes(model)


def test_converted_weight_bytes_hand_computed():
    # the book's GPT: 4 layers of 128 dims; attention and FFN hold 786,432 weights in 24
    # matrices with 4,608 rows; 4 bits per channel: half a byte per weight + a 4-byte scale a row
    book = GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=4, n_head=4, n_embd=128))
    assert converted_weight_bytes(book, WeightOnlyConfig(bits=4)) == (
        786_432 * 4, 786_432 // 2 + 4_608 * 4)
    # int8 per channel on 128-wide rows: 512 float bytes become 128 codes + a 4-byte scale
    float_bytes, q_bytes = converted_weight_bytes(
        book, WeightOnlyConfig(bits=8, targets=("attention",)))
    assert float_bytes / q_bytes == pytest.approx(512 / 132)


def test_predicted_size_refuses_other_configs():
    with pytest.raises(TypeError, match=r"config is a DynamicConfig: expected a WeightOnlyConfig"):
        predicted_size_bytes(tiny_gpt(), DynamicConfig())
