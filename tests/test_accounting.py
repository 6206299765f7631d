"""Tests for quantbook.accounting against ledgers counted by hand for tiny GPTs and BERTs."""

import pytest
import torch
from torch import nn

from quantbook.accounting import ROWS, GroupCost, group_accounting
from quantbook.gpt import GPT, GPTConfig
from quantbook.quiet import quiet_torch_ao


def table(model, seq_len):
    rows = group_accounting(model, seq_len)
    assert all(isinstance(row, GroupCost) for row in rows)
    assert [row.group for row in rows] == list(ROWS)
    return {row.group: (row.n_params, row.macs_per_token) for row in rows}


def test_tiny_gpt_by_hand():
    # d = 8, 2 layers, vocab 11, block 16, biases everywhere, T = 4
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8))
    assert table(model, seq_len=4) == {
        "embeddings": (11 * 8 + 16 * 8, 0),  # lookups cost no MACs
        "attention": (2 * 4 * (8 * 8 + 8), 2 * 4 * 8 * 8),
        "attention matmuls": (0, 2 * (2 * 4 * 8)),  # q @ k^T and att @ v, per layer
        "ffn": (2 * ((8 * 32 + 32) + (32 * 8 + 8)), 2 * 2 * 8 * 32),
        "head": (8 * 11 + 11, 8 * 11),
        "norms/other": (2 * 2 * 16 + 16, 0),  # ln_1, ln_2 per block, ln_f; weight + bias
    }


def test_tiny_bert_by_hand():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=20)
    model = BertModel(config, add_pooling_layer=True)
    assert table(model, seq_len=5) == {
        "embeddings": (30 * 8 + 20 * 8 + 2 * 8, 0),
        "attention": (2 * 4 * (8 * 8 + 8), 2 * 4 * 8 * 8),
        "attention matmuls": (0, 2 * (2 * 5 * 8)),
        "ffn": (2 * ((8 * 16 + 16) + (16 * 8 + 8)), 2 * 2 * 8 * 16),
        "head": (0, 0),
        # embedding LayerNorm, two LayerNorms per layer, and the pooler (unused by MiniLM)
        "norms/other": (16 + 2 * 2 * 16 + (8 * 8 + 8), 0),
    }


def test_totals_shares_and_bytes():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8))
    rows = group_accounting(model, seq_len=16)
    assert sum(row.n_params for row in rows) == model.num_params()
    assert sum(row.param_share for row in rows) == pytest.approx(1.0)
    assert sum(row.mac_share for row in rows) == pytest.approx(1.0)
    assert all(row.float32_bytes == 4 * row.n_params for row in rows)


def test_only_attention_matmuls_depend_on_seq_len():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8))
    short, long = table(model, 1), table(model, 16)
    assert long["attention matmuls"][1] == 16 * short["attention matmuls"][1]
    assert {k: v for k, v in short.items() if k != "attention matmuls"} == {
        k: v for k, v in long.items() if k != "attention matmuls"
    }


def test_errors():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=r"seq_len=0 is not supported: choose an integer >= 1"):
        group_accounting(model, 0)
    with pytest.raises(TypeError, match=r"model is a Linear, which quantbook cannot map"):
        group_accounting(nn.Linear(2, 2), 4)


def test_a_quantized_copy_is_refused_rather_than_miscounted():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8))
    with quiet_torch_ao():
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    # its Linear layers keep their names but hold packed int8 weights, not parameters
    match = (r"model\.blocks\.0\.attn\.q_proj is a torch\.ao\.nn\.quantized\.dynamic\..*Linear, "
             r"not an nn\.Linear: group_accounting counts the float model")
    with pytest.raises(TypeError, match=match):
        group_accounting(quantized, 4)
    assert group_accounting(model, 4)[1].n_params == 4 * (8 * 8 + 8)  # the float one still counts
