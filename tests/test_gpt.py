import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from quantbook import gpt
from quantbook.data import lee_split
from quantbook.gpt import GPT, GPTConfig
from quantbook.tokenizer import CharTokenizer

TINY = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny_model(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def test_shapes_and_linear_names():
    model = tiny_model()
    idx = torch.randint(0, 11, (3, 7))
    logits, loss = model(idx)
    assert logits.shape == (3, 7, 11) and loss is None
    _, loss = model(idx, idx)
    assert loss.shape == ()
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for i in range(2):
        for leaf in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj",
                     "mlp.fc_in", "mlp.fc_out"):
            assert f"blocks.{i}.{leaf}" in names
    assert "lm_head" in names
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()  # not tied


def test_too_long_input_raises():
    with pytest.raises(ValueError, match=r"sequence length 17 exceeds block_size=16"):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))


def test_config_validation():
    with pytest.raises(ValueError, match=r"n_embd=10 is not divisible by n_head=4"):
        GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=4, n_embd=10)
    with pytest.raises(ValueError, match=r"n_layer=0: expected a positive integer"):
        GPTConfig(vocab_size=5, block_size=8, n_layer=0, n_head=1, n_embd=4)


def test_causal_mask_is_causal():
    model = tiny_model()
    idx = torch.randint(0, 11, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 11
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :8], after[:, :8], rtol=0, atol=0)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_untrained_loss_is_log_vocab():
    config = GPTConfig(vocab_size=81, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = tiny_model(config=config)
    idx = torch.randint(0, 81, (8, 32), generator=torch.Generator().manual_seed(0))
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(81), abs=0.05)


def test_attention_matches_sdpa():
    attn = tiny_model().blocks[0].attn
    x = torch.randn(3, 10, 16, generator=torch.Generator().manual_seed(1))
    B, T, C, H = 3, 10, 16, 2

    def heads(t):
        return t.view(B, T, H, C // H).transpose(1, 2)

    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


def test_sample_deterministic_for_seed():
    model = tiny_model()
    tok = CharTokenizer.from_text("abcdefghij")
    a = gpt.sample(model, tok, "abc", 30, seed=5)
    assert a == gpt.sample(model, tok, "abc", 30, seed=5)
    assert a != gpt.sample(model, tok, "abc", 30, seed=6)
    assert a.startswith("abc") and len(a) == 33
    with pytest.raises(ValueError, match=r"temperature=0: expected a positive number"):
        gpt.sample(model, tok, "abc", 3, temperature=0)
    assert gpt.sample(model, tok, "abc", 0) == "abc"
    with pytest.raises(ValueError, match=r"max_new_tokens=-1: expected 0 or more"):
        gpt.sample(model, tok, "abc", -1)
    with pytest.raises(ValueError, match=r"prompt='' is empty"):
        gpt.sample(model, tok, "", 3)


def test_sample_top_k_one_is_greedy():
    model = tiny_model()
    tok = CharTokenizer.from_text("abcdefghij")
    ids = tok.encode("ab")
    for _ in range(5):  # greedy decoding computed independently
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert gpt.sample(model, tok, "ab", 5, top_k=1, seed=9) == tok.decode(ids)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ab c\n.Zé", max_size=40))
def test_tokenizer_round_trip(text):
    tok = CharTokenizer.from_text("ab c\n.Zé")
    ids = tok.encode(text)
    assert all(1 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert CharTokenizer(tok.chars).encode(text) == ids


def test_tokenizer_unknown_and_order():
    tok = CharTokenizer.from_text("abba")
    assert tok.chars == [CharTokenizer.UNK, "a", "b"]
    assert tok.encode("abc") == [1, 2, 0]
    assert tok.decode([1, 0]) == "a\ufffd"
    with pytest.raises(ValueError, match="must start with CharTokenizer.UNK"):
        CharTokenizer(["a", "b"])


def test_perplexity_matches_hand_computation():
    model = tiny_model()
    ids = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(2))
    got = gpt.perplexity(model, ids, block_size=16, batch_size=1)
    # Windows [0,16), [16,32), [32,39) predict tokens 1..39 exactly once.
    nll = []
    for lo in (0, 16, 32):
        hi = min(lo + 16, 39)
        logits, _ = model(ids[lo:hi][None])
        nll.append(-F.log_softmax(logits[0], -1).gather(1, ids[lo + 1:hi + 1, None]))
    loss = torch.cat(nll).mean().item()
    assert got["n_tokens"] == 39
    assert got["loss_nats"] == pytest.approx(loss, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert got["bits_per_token"] == pytest.approx(loss / math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match=r"block_size=17 is out of range: expected 1..16"):
        gpt.perplexity(model, ids, block_size=17)


def test_unigram_baseline_hand_computed():
    # train counts a:3 b:1 (vocab 3 with unk); add-one: p = [1, 4, 2] / 7
    got = gpt.unigram_baseline([1, 1, 2, 1], [2, 1, 2, 0], vocab_size=3)
    loss = -(math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 3
    assert got["n_tokens"] == 3
    assert got["loss_nats"] == pytest.approx(loss)
    assert got["perplexity"] == pytest.approx(math.exp(loss))


# ---- checkpoints ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = tiny_model(3)
    tok = CharTokenizer.from_text("abcdefghij")
    path = gpt.save_checkpoint(model, tok, tmp_path / "m.safetensors", {"x": 1.5}, seed=7)
    loaded, tok2, meta = gpt.load_gpt(path)
    assert not loaded.training
    assert tok2.chars == tok.chars
    assert meta["metrics"] == {"x": 1.5} and meta["seed"] == 7
    assert meta["config"]["n_embd"] == 16 and meta["torch_version"] == torch.__version__
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def _tamper(tmp_path, edit_tensors=None, edit_config=None):
    model, tok = tiny_model(), CharTokenizer.from_text("abcdefghij")
    path = gpt.save_checkpoint(model, tok, tmp_path / "ok.safetensors", {})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        meta["config"] = json.dumps(edit_config(json.loads(meta["config"])))
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    return bad


def test_missing_key_raises(tmp_path):
    bad = _tamper(tmp_path, edit_tensors=lambda t: t.pop("blocks.1.attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.attn.k_proj.bias'\].*"
                                         r"make checkpoint"):
        gpt.load_gpt(bad)


def test_unexpected_key_raises(tmp_path):
    bad = _tamper(tmp_path, edit_tensors=lambda t: t.update(extra=torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        gpt.load_gpt(bad)


def test_shape_mismatch_raises(tmp_path):
    bad = _tamper(tmp_path, edit_config=lambda c: {**c, "block_size": 32})
    with pytest.raises(ValueError, match=r"shape mismatch for pos_emb.weight: checkpoint "
                                         r"\(16, 16\), config expects \(32, 16\).*make checkpoint"):
        gpt.load_gpt(bad)


def test_vocab_mismatch_and_missing_file_raise(tmp_path):
    bad = _tamper(tmp_path, edit_config=lambda c: {**c, "vocab_size": 12})
    with pytest.raises(ValueError, match=r"stores 11 vocabulary entries but its config has "
                                         r"vocab_size=12"):
        gpt.load_gpt(bad)
    with pytest.raises(FileNotFoundError, match="make checkpoint"):
        gpt.load_gpt(tmp_path / "nope.safetensors")


def test_committed_checkpoint_reproduces_its_metrics():
    model, tok, meta = gpt.load_gpt()
    split = lee_split()
    metrics = meta["metrics"]
    val_ids = tok.encode(split.validation)
    got = gpt.perplexity(model, val_ids, metrics["eval_block_size"],
                         batch_size=metrics["eval_batch_size"])
    assert got["n_tokens"] == metrics["val_n_tokens"]
    assert got["perplexity"] == pytest.approx(metrics["val_perplexity"], rel=1e-4)
    assert got["bits_per_token"] == pytest.approx(metrics["val_bits_per_token"], rel=1e-4)
    # The baseline, recomputed independently of the stored number.
    unigram = gpt.unigram_baseline(tok.encode(split.train), val_ids, tok.vocab_size)
    assert unigram["perplexity"] == pytest.approx(metrics["unigram_perplexity"], rel=1e-9)
    assert got["perplexity"] < 0.4 * unigram["perplexity"]
    assert tok.chars == CharTokenizer.from_text(split.train).chars
