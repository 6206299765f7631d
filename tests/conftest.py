"""Shared test set-up.

`make unit` runs two pytest workers on a 2-core machine: one torch thread per worker avoids the
oversubscription that makes small tensor ops stall waiting for a busy core.
"""

import pytest
import torch
from torch import nn

from quantbook.gpt import GPT, GPTConfig

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_open_figures():
    """Each test starts with no open matplotlib figure, so a leak is charged to its own test."""
    import matplotlib.pyplot as plt

    plt.close("all")
    yield


@pytest.fixture
def draft_figures(monkeypatch):
    """Figures saved at 10 dpi, without the second drawing pass of ``bbox_inches="tight"``.

    For tests of what explorers hold and how their controls link (views, start values, alt
    text), not of pixels: it halves their time. tests/test_figures.py draws every chapter figure
    and explorer image at full resolution and checks its legibility.
    """
    import matplotlib.figure

    savefig = matplotlib.figure.Figure.savefig

    def draft(self, fname, *args, **kwargs):
        kwargs.update(dpi=10, bbox_inches=None)
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", draft)


def make_gpt(seed: int = 0, **overrides) -> GPT:
    """A tiny untrained GPT with the real module names (vocab 64, 16 positions, 2 layers)."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32) | overrides
    return GPT(GPTConfig(**settings)).eval()


def make_bert(vocab_size: int = 100, max_positions: int = 32) -> nn.Module:
    """A tiny transformers BertModel: the layout of MiniLM, without loading MiniLM."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False).eval()


class OnCuda:
    """Stands in for a tensor on a GPU: all that the device checks read is ``.device``."""

    device = torch.device("cuda", 0)


class FakeCudaModel(nn.Module):
    """A float model with one buffer that claims to live on a GPU (no GPU needed).

    The methods' boundary check reads the devices of ``named_parameters`` and
    ``named_buffers``; this model reports a CUDA one, so the check's message can be tested on a
    CPU-only machine.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def named_buffers(self, *args, **kwargs):
        yield "stats", OnCuda()


@pytest.fixture(scope="module")
def gpt():
    """A tiny untrained GPT with the real module names, for the methods' tests (not modified)."""
    return make_gpt()


@pytest.fixture(scope="module")
def batches():
    """Three calibration batches of token ids for the tiny GPT."""
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(3)]
