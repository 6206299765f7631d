import math

import pytest
import torch

from quantbook.data import TextSplit, lee_split
from quantbook.gpt import CharTokenizer, GPTConfig
from quantbook.train import TrainConfig, learning_rate, train

SPLIT = lee_split()
TEXT = TextSplit(train=SPLIT.train[:20_000], validation=SPLIT.validation[:2_000])
VOCAB = CharTokenizer.from_text(TEXT.train).vocab_size
TINY = GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.1)
# One thread: tiny ops on 2 threads crawl when other processes share the 2 cores (~40x slower).
FAST = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup=5, eval_interval=20, eval_tokens=512,
                   num_threads=1)


def test_deterministic_and_loss_decreases():
    calls = []
    threads = torch.get_num_threads()
    rng_before = torch.get_rng_state()
    a, tok, hist = train(TINY, FAST, seed=0, split=TEXT,
                         progress=lambda step, logs: calls.append((step, logs)))
    b, _, _ = train(TINY, FAST, seed=0, split=TEXT)
    c, _, _ = train(TINY, FAST, seed=1, split=TEXT)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    # Side effects undone: thread count and global RNG state.
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not a.training and tok.vocab_size == VOCAB
    assert len(hist.train_loss) == 40 and hist.eval_step == [19, 39]
    assert hist.train_loss[0] == pytest.approx(math.log(VOCAB), abs=0.3)
    assert sum(hist.train_loss[-5:]) / 5 < hist.train_loss[0] - 0.8
    assert hist.val_loss[1] < hist.val_loss[0] < math.log(VOCAB)
    assert [s for s, _ in calls] == [19, 39]
    assert set(calls[0][1]) == {"train_loss", "val_loss", "lr", "elapsed_s"}
    assert hist.train_seconds > 0


def test_learning_rate_schedule_hand_values():
    cfg = TrainConfig(steps=111, lr=1e-3, min_lr=1e-4, warmup=10)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, cfg) == pytest.approx(5.5e-4)
    assert learning_rate(110, cfg) == pytest.approx(1e-4)


def test_vocab_mismatch_raises():
    bad = GPTConfig(vocab_size=VOCAB + 1, block_size=32, n_layer=1, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match=rf"gpt_config.vocab_size={VOCAB + 1} but the training "
                                         rf"text has {VOCAB} tokens"):
        train(bad, FAST, seed=0, split=TEXT)


def test_config_validation():
    with pytest.raises(ValueError, match=r"warmup=50: expected 0..steps=10"):
        TrainConfig(steps=10, warmup=50)
    with pytest.raises(ValueError, match=r"steps=0: expected a positive integer"):
        TrainConfig(steps=0, warmup=0)
