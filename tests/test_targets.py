"""Tests for quantbook.targets against module names written out by hand."""

import pytest
import torch
from torch import nn

from quantbook.gpt import GPT, GPTConfig
from quantbook.methods import PackedLinear, WeightOnlyConfig, quantize_weight_only
from quantbook.targets import (
    GROUP_TYPES,
    GROUPS,
    check_groups,
    list_targets,
    model_family,
    resolve_targets,
)

AO_DEPRECATED = "ignore:torch.ao.quantization is deprecated:DeprecationWarning"
QTENSOR_DEPRECATED = (
    "ignore:torch.quantize_per_tensor, torch.quantize_per_channel and other quantized:UserWarning"
)


def tiny_gpt() -> GPT:
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8))


def tiny_bert(add_pooling_layer: bool = False) -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=20)
    return BertModel(config, add_pooling_layer=add_pooling_layer)


GPT_TARGETS = {
    # q, k, v then out per layer, in model order
    "attention": [
        f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ],
    "ffn": ["blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out", "blocks.1.mlp.fc_in",
            "blocks.1.mlp.fc_out"],
    "embeddings": ["tok_emb", "pos_emb"],
    "head": ["lm_head"],
}
BERT_TARGETS = {
    "attention": [
        f"encoder.layer.{i}.attention.{p}" for i in range(2)
        for p in ("self.query", "self.key", "self.value", "output.dense")
    ],
    "ffn": ["encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense",
            "encoder.layer.1.intermediate.dense", "encoder.layer.1.output.dense"],
    "embeddings": ["embeddings.word_embeddings", "embeddings.position_embeddings",
                   "embeddings.token_type_embeddings"],
    "head": [],
}


def test_gpt_targets_by_hand():
    model = tiny_gpt()
    assert model_family(model) == "gpt"
    assert list_targets(model) == GPT_TARGETS
    assert resolve_targets(model, ["head", "attention"]) == {
        "head": ["lm_head"], "attention": GPT_TARGETS["attention"],
    }


@pytest.mark.parametrize("add_pooling_layer", [False, True])
def test_bert_targets_by_hand(add_pooling_layer):
    model = tiny_bert(add_pooling_layer)
    assert model_family(model) == "bert"
    assert list_targets(model) == BERT_TARGETS  # the pooler belongs to no group
    assert resolve_targets(model, ["ffn"]) == {"ffn": BERT_TARGETS["ffn"]}


def test_every_target_is_a_module_of_the_right_type():
    assert GROUP_TYPES == {"attention": nn.Linear, "ffn": nn.Linear, "embeddings": nn.Embedding,
                           "head": nn.Linear}
    for model in (tiny_gpt(), tiny_bert()):
        modules = dict(model.named_modules())
        for group, names in list_targets(model).items():
            assert all(type(modules[name]) is GROUP_TYPES[group] for name in names)
    assert tuple(list_targets(tiny_gpt())) == GROUPS


def test_family_is_recognised_by_layout_not_class_name():
    class SomethingElse(nn.Module):  # same attribute layout as the GPT, unrelated class
        def __init__(self):
            super().__init__()
            inner = tiny_gpt()
            self.tok_emb, self.pos_emb = inner.tok_emb, inner.pos_emb
            self.blocks, self.lm_head = inner.blocks, inner.lm_head

    assert list_targets(SomethingElse()) == GPT_TARGETS


def test_a_single_string_is_one_group_and_repeats_are_dropped():
    model = tiny_gpt()
    assert resolve_targets(model, "ffn") == resolve_targets(model, ["ffn"])
    assert resolve_targets(model, ("head", "head")) == {"head": ["lm_head"]}


def test_group_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"groups=\['mlp'\] names an unknown group 'mlp': "
                                         r"choose from attention, ffn, embeddings, head"):
        resolve_targets(model, ["mlp"])
    with pytest.raises(ValueError, match=r"groups=\[\] is empty: choose at least one of attention"):
        resolve_targets(model, [])
    with pytest.raises(TypeError, match=r"groups=\['ffn', 3\] holds a int: expected group names"):
        resolve_targets(model, ["ffn", 3])
    with pytest.raises(TypeError, match=r"groups=3 is not supported: pass a tuple of group names"):
        resolve_targets(model, 3)


def test_minilm_has_no_head():
    with pytest.raises(ValueError, match=r"group 'head' matches no module of this model: MiniLM "
                                         r"has no output head: .*mean pooling.*; choose from "
                                         r"attention, ffn, embeddings"):
        resolve_targets(tiny_bert(), ["attention", "head"])


@pytest.mark.filterwarnings(AO_DEPRECATED)
@pytest.mark.filterwarnings(QTENSOR_DEPRECATED)
def test_members_are_matched_by_name_whatever_their_type():
    # a quantized copy lists its quantized modules in their places, so that the methods can
    # tell "already quantized" from "absent"
    quantized = torch.ao.quantization.quantize_dynamic(tiny_gpt(), {nn.Linear}, dtype=torch.qint8)
    assert list_targets(quantized) == GPT_TARGETS
    assert type(quantized.get_submodule(GPT_TARGETS["ffn"][0])) is not nn.Linear
    packed, _ = quantize_weight_only(tiny_gpt(), WeightOnlyConfig(targets=("ffn",)))
    assert resolve_targets(packed, "ffn") == {"ffn": GPT_TARGETS["ffn"]}
    assert all(type(packed.get_submodule(n)) is PackedLinear for n in GPT_TARGETS["ffn"])


def test_check_groups_validates_and_normalizes():
    assert check_groups("ffn") == ["ffn"]
    assert check_groups(("head", "ffn", "head")) == ["head", "ffn"]
    assert check_groups(iter(["attention"])) == ["attention"]


def test_unsupported_models():
    with pytest.raises(TypeError, match=r"model is a Linear, which quantbook cannot map to module "
                                        r"groups: expected quantbook's GPT or a transformers "
                                        r"BertModel"):
        list_targets(nn.Linear(2, 2))

    class Wrapper(nn.Module):  # the layout of a BERT task model such as BertForSequenceClass.
        def __init__(self):
            super().__init__()
            self.bert = tiny_bert()

    with pytest.raises(TypeError, match=r"for a BERT task model, pass its \.bert"):
        resolve_targets(Wrapper(), "ffn")

    class TransformerModule(nn.Module):  # the layout of sentence-transformers' first module
        def __init__(self):
            super().__init__()
            self.auto_model = tiny_bert()

    with pytest.raises(TypeError, match=r"for a SentenceTransformer, pass model\[0\]\.auto_model"):
        resolve_targets(nn.Sequential(TransformerModule()), "ffn")
