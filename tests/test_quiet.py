import subprocess
import sys
import warnings

import pytest
import torch

from quantbook import quiet

SCRIPT = """
import torch
from quantbook.quiet import silence_known_noise
{call}
import torchao
from torch.ao.quantization import quantize_dynamic
model = torch.nn.Sequential(torch.nn.Linear(8, 8))
quantize_dynamic(model, {{torch.nn.Linear}}, dtype=torch.qint8)
torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
"""


def _stderr(call: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", SCRIPT.format(call=call)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    return result.stderr


def test_known_noise_exists_and_is_silenced():
    # The reference: without the filters, the pinned versions really do write this noise.
    noisy = _stderr("")
    assert "torch.ao.quantization is deprecated" in noisy
    assert "torch.quantize_per_tensor" in noisy
    assert _stderr("silence_known_noise()") == ""


def test_other_warnings_still_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet.silence_known_noise()
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("an unrelated user warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else is deprecated", "an unrelated user warning",
    ]


def test_filters_are_precise_about_category():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet.silence_known_noise()
        # same text, another category: not ours, so it must still show
        warnings.warn("torch.ao.quantization is deprecated", FutureWarning, stacklevel=1)
    assert len(caught) == 1


@pytest.mark.parametrize("name", quiet.KNOWN_LOGGERS)
def test_loggers_raised(name):
    quiet.silence_known_noise()
    import logging

    assert logging.getLogger(name).level == logging.ERROR
    assert torch.__version__.startswith("2.13")
