"""Tests for quantbook.validate: the model and batch checks every method runs at its boundary."""

import warnings

import pytest
import torch
from conftest import FakeCudaModel, make_bert, make_gpt
from torch import nn

from quantbook.quiet import silence_known_noise
from quantbook.validate import check_batches, check_model

LABEL = "some method"


# ------------------------------------------------------------------ check_model


def test_a_float32_cpu_model_passes_and_nothing_is_changed():
    model = make_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert check_model(model, LABEL) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    check_model(nn.ReLU(), LABEL)  # no parameters at all: nothing to refuse
    check_model(nn.Embedding(4, 2), LABEL)


@pytest.mark.parametrize("model, error, match", [
    ({"weight": torch.ones(2)}, TypeError, r"model is a dict: expected a torch\.nn\.Module "
                                           r"\(pass the model itself, not its state_dict or its "
                                           r"output\)"),
    (torch.ones(2), TypeError, r"model is a Tensor: expected a torch\.nn\.Module"),
    (nn.Linear(2, 2).half(), ValueError, r"some method: parameter 'weight' is torch\.float16, and "
                                         r"quantization starts from float32 weights .* call "
                                         r"model\.float\(\) first"),
    (nn.Linear(2, 2).double(), ValueError, r"parameter 'weight' is torch\.float64"),
    (nn.Linear(2, 2).to("meta"), ValueError, r"some method: the model has tensors on the meta "
                                             r"device \(shapes without data\); load its weights "
                                             r"first, e\.g\. model\.to_empty\(device='cpu'\) then "
                                             r"model\.load_state_dict\(state_dict\)"),
])
def test_refused_models(model, error, match):
    with pytest.raises(error, match=match):
        check_model(model, LABEL)


@pytest.mark.parametrize("value, count", [(float("nan"), 1), (float("inf"), 1),
                                          (float("-inf"), 1)])
def test_non_finite_weights_are_counted(value, count):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        model[1].bias[2] = value
    with pytest.raises(ValueError, match=rf"some method: parameter '1\.bias' holds {count} NaN "
                                         r"or inf values, which would turn every output into NaN "
                                         r"after quantization: find where they came from"):
        check_model(model, LABEL)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"parameter '0\.weight' holds 16 NaN or inf values"):
        check_model(model, LABEL)


def test_integer_parameters_and_buffers_are_not_dtype_checked():
    model = nn.Linear(2, 2)
    model.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
    check_model(model, LABEL)


def test_a_cuda_model_is_refused_by_cpu_only_methods_with_the_way_out():
    with pytest.raises(ValueError, match=r"some method: the model has tensors on cuda, but this "
                                         r"method runs on cpu only: quantize model\.cpu\(\); on a "
                                         r"GPU use a torchao method \(quantize_torchao_dynamic\)"):
        check_model(FakeCudaModel(), LABEL)
    check_model(FakeCudaModel(), LABEL, devices=("cpu", "cuda"))  # torchao's methods
    with pytest.raises(ValueError, match=r"tensors on cpu, but this method runs on cuda only: "
                                         r"move it to one of \('cuda',\)"):
        check_model(nn.Linear(2, 2), LABEL, devices=("cuda",))


def test_a_torchao_model_is_refused_as_already_quantized():
    with warnings.catch_warnings():
        silence_known_noise()
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    model = nn.Sequential(nn.Linear(16, 16))
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    with pytest.raises(ValueError, match=r"some method: parameter '0\.weight' is a Int8Tensor, so "
                                         r"this model is already quantized \(by torchao\): "
                                         r"quantize the float model, not a quantized copy"):
        check_model(model, LABEL)


# ------------------------------------------------------------------ check_batches


@pytest.fixture(scope="module")
def bert():
    return make_bert(vocab_size=100, max_positions=32)


def test_good_batches_come_back_as_a_list(gpt):
    ids = torch.randint(0, 64, (2, 16))
    short, as_int, edge = ids[:, :5], ids.int(), torch.tensor([[0, 63]])  # edge: both ends
    assert check_batches(gpt, [ids, short]) == [ids, short]  # the same objects, in order
    assert check_batches(gpt, (ids,)) == [ids]
    assert check_batches(gpt, (b for b in [ids, ids])) == [ids, ids]  # a generator, consumed once
    assert check_batches(gpt, [as_int, edge]) == [as_int, edge]


def test_tokenizer_dicts_are_checked_through_their_input_ids(bert):
    good = {"input_ids": torch.randint(0, 100, (2, 32)), "attention_mask": torch.ones(2, 32)}
    assert check_batches(bert, [good]) == [good]
    with pytest.raises(ValueError, match=r"batches\[0\] holds token ids .*\.\.100, outside the "
                                         r"model's vocabulary 0\.\.99"):
        check_batches(bert, [{"input_ids": torch.full((1, 4), 100)}])
    with pytest.raises(ValueError, match=r"batches\[0\] has 33 tokens per sequence, more than the "
                                         r"model's 32 positions: truncate \(tokenizer\(\.\.\., "
                                         r"truncation=True, max_length=32\)\)"):
        check_batches(bert, [{"input_ids": torch.zeros(1, 33, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"batches\[1\]\['attention_mask'\] has shape \(2, 3\) "
                                         r"but 'input_ids' has \(2, 32\): tokenize the batch in "
                                         r"one call"):
        check_batches(bert, [good, {**good, "attention_mask": torch.ones(2, 3)}])


@pytest.mark.parametrize("batches, error, match", [
    (torch.zeros(2, 4, dtype=torch.long), TypeError,
     r"batches is a single Tensor: pass a list of batches, e\.g\. \[batches\]"),
    ({"input_ids": torch.zeros(2, 4)}, TypeError, r"batches is a single dict: pass a list"),
    ("the cat sat", TypeError, r"batches is a single str: pass a list"),
    (None, TypeError, r"batches is a NoneType: pass a list of batches"),
    (3, TypeError, r"batches is a int: pass a list of batches"),
    ([], ValueError, r"batches is empty: calibration needs at least one batch, e\.g\. "
                     r"quantbook\.data\.minilm_calibration_batches\(tokenizer\) or "
                     r"gpt_calibration_batches\(tokenizer, block_size\)"),
    (iter([]), ValueError, r"batches is empty"),
    ([torch.zeros(16, dtype=torch.long)], ValueError,
     r"batches\[0\] has shape \(16,\): expected a non-empty \(batch, tokens\) matrix; add the "
     r"batch dimension with ids\[None\]"),
    ([torch.zeros(2, 0, dtype=torch.long)], ValueError, r"batches\[0\] has shape \(2, 0\)"),
    ([torch.zeros(1, 2, 16, dtype=torch.long)], ValueError, r"has shape \(1, 2, 16\)"),
    ([torch.zeros(2, 16)], TypeError, r"batches\[0\] holds torch\.float32 token ids: expected "
                                      r"integers \(torch\.long\); token ids are indices"),
    ([torch.zeros(2, 16, dtype=torch.bool)], TypeError, r"holds torch\.bool token ids"),
    ([[1, 2, 3]], TypeError, r"batches\[0\] is a list: expected a LongTensor of token ids "
                             r"\(B, T\), or a tokenizer's output \(a dict with 'input_ids'\)"),
    (["the cat"], TypeError, r"batches\[0\] is a str: expected a LongTensor"),
    ([{"attention_mask": torch.ones(2, 16)}], TypeError, r"batches\[0\] is a dict: expected a "
                                                         r"LongTensor .*'input_ids'"),
    ([torch.full((2, 4), -1)], ValueError, r"batches\[0\] holds token ids -1\.\.-1, outside the "
                                           r"model's vocabulary 0\.\.63: tokenize with this "
                                           r"model's own tokenizer"),
    ([torch.randint(0, 64, (2, 4)), torch.arange(60, 68)[None]], ValueError,
     r"batches\[1\] holds token ids 60\.\.67, outside the model's vocabulary 0\.\.63"),
    ([torch.zeros(2, 17, dtype=torch.long)], ValueError,
     r"batches\[0\] has 17 tokens per sequence, more than the model's 16 positions"),
])
def test_refused_batches_for_the_gpt(gpt, batches, error, match):
    with pytest.raises(error, match=match):
        check_batches(gpt, batches)


def test_the_name_in_messages_is_the_callers(gpt):
    with pytest.raises(ValueError, match=r"calibration\[0\] has 17 tokens"):
        check_batches(gpt, [torch.zeros(1, 17, dtype=torch.long)], name="calibration")
    with pytest.raises(ValueError, match=r"calibration is empty"):
        check_batches(gpt, [], name="calibration")


def test_other_models_get_the_structural_checks_only():
    model = nn.Sequential(nn.Linear(4, 4))
    wide = torch.full((1, 1000), 10**6)  # no vocabulary or length is known for this model
    features = torch.randn(3, 4)  # its run_fn decides what a batch is: floats are fine
    assert check_batches(model, [wide]) == [wide]
    assert check_batches(model, (b for b in [features])) == [features]
    with pytest.raises(ValueError, match=r"batches is empty"):
        check_batches(model, [])
    with pytest.raises(TypeError, match=r"batches is a single Tensor: pass a list"):
        check_batches(model, features)


def test_batches_of_the_other_model_are_refused(gpt, bert):
    minilm_like = [{"input_ids": torch.randint(64, 100, (2, 20)),
                    "attention_mask": torch.ones(2, 20, dtype=torch.long)}]
    with pytest.raises(ValueError, match=r"outside the model's vocabulary 0\.\.63: tokenize with "
                                         r"this model's own tokenizer"):
        check_batches(gpt, minilm_like)


def test_bare_token_ids_are_refused_for_a_bert(bert):
    with pytest.raises(TypeError, match=r"batches\[0\] is a bare Tensor.*tokenizer's output.*"
                                        r"minilm_calibration_batches"):
        check_batches(bert, [torch.randint(0, 64, (4, 16))])
