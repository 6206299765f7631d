"""Shared test set-up.

`make unit` runs two pytest workers on a 2-core machine: one torch thread per worker avoids the
oversubscription that makes small tensor ops stall waiting for a busy core.
"""

import pytest
import torch

from quantbook.gpt import GPT, GPTConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gpt():
    """A tiny untrained GPT with the real module names, for the methods' tests."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def batches():
    """Three calibration batches of token ids for the tiny GPT."""
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(3)]
