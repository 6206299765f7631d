"""Precise filters for the known, harmless noise of the pinned torch and torchao.

The book stores every cell's output, so anything a library writes to stderr would end up on the
page and make the stored outputs unstable. Three sources are known, each explained in
``00_setup.ipynb``, and each is silenced here *by name*, never wholesale:

* ``import torchao`` logs "Failed to load ..." for its CUDA-only extensions (this is a CPU build)
  through the ``torchao`` logger, and torch's ``torch.utils._pytree`` logger warns that
  registering an Enum is deprecated. Both are log records, so their loggers are raised to ERROR.
  This must happen *before* torchao is imported.
* ``torch.ao.quantization`` raises a ``DeprecationWarning`` (the eager API moves to torchao).
* Creating quantized tensors (``torch.quantize_per_tensor`` and friends, also used inside the
  eager quantized modules) raises a ``UserWarning`` that those dtypes are deprecated.

Any *other* warning still shows.
"""

import contextlib
import logging
import warnings
from collections.abc import Iterator

# (category, regular expression matched against the start of the message)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized"),
)
# loggers that write import-time noise to stderr
KNOWN_LOGGERS: tuple[str, ...] = ("torchao", "torch.utils._pytree")


def silence_known_noise() -> None:
    """Silence exactly the known torch/torchao warnings and import-time log lines.

    Call it before importing torchao. It is idempotent.
    """
    for name in KNOWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Run torch.ao / torchao calls without letting their known warnings reach the caller."""
    with warnings.catch_warnings():
        silence_known_noise()
        yield
