"""``torch.compile`` (inductor) for inference on the CPU: step 5 of PT2E, and any model's.

:func:`compile_model` compiles a float model, a torchao-quantized one or the converted graph of
:func:`quantbook.methods.compiled.quantize_pt2e`, with *freezing* on so that inductor's x86
passes can fold int8 patterns into oneDNN kernels. Inductor writes C++ and needs a working C++
compiler at run time (:func:`check_cpp_compiler`).
"""

from __future__ import annotations

import itertools
import time
import types
import warnings

import torch
from torch import nn


def check_cpp_compiler() -> str:
    """The C++ compiler inductor will use; a clear error when there is none.

    Raises:
        RuntimeError: no working compiler (inductor compiles the kernels it generates).
    """
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise RuntimeError(
            "torch.compile on the CPU needs a C++ compiler at run time, and none works here "
            "(inductor looks for $CXX, else g++): install one (apt-get install g++, or "
            "conda install gxx) or point CXX at it; without a compiler, run the model "
            "uncompiled") from None


_ids = itertools.count()


def _entry(module: nn.Module, *args, **kwargs):
    return module(*args, **kwargs)


class CompiledModel(nn.Module):
    """A model compiled by inductor, called with freezing set as chosen.

    Each instance compiles a function with its *own* code object: dynamo caches compiled code
    per code object and its guards do not include inductor's settings, so two compiles of one
    model class (with and without freezing) would otherwise share graphs.

    Attributes:
        inner: the model that was compiled (its ``config`` is forwarded for evaluators).
        first_call_s: wall seconds of the first call, which compiles (``None`` before it).
    """

    def __init__(self, model: nn.Module, *, freezing: bool = True,
                 dynamic: bool | None = None) -> None:
        super().__init__()
        self.inner = model
        self.freezing = freezing
        self.config = getattr(model, "config", None)
        code = _entry.__code__.replace(co_name=f"compiled_{next(_ids)}")
        entry = types.FunctionType(code, _entry.__globals__, code.co_name)
        self._compiled = torch.compile(entry, dynamic=dynamic)
        self.first_call_s: float | None = None

    def forward(self, *args, **kwargs):
        start = time.perf_counter()
        with torch._inductor.config.patch(freezing=self.freezing), warnings.catch_warnings():
            # inductor's own oneDNN lowering copies a tensor with torch.tensor(tensor) while
            # it compiles an int8 Linear; the advice is for inductor's authors, not for readers
            warnings.filterwarnings("ignore", message="To copy construct from a tensor",
                                    category=UserWarning)
            out = self._compiled(self.inner, *args, **kwargs)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - start
        return out


def compile_model(model: nn.Module, *, freezing: bool = True,
                  dynamic: bool | None = None) -> CompiledModel:
    """``torch.compile`` for inference on the CPU, checked first.

    Args:
        model: a float model, a torchao-quantized one, or :func:`quantize_pt2e`'s graph.
        freezing: let inductor treat weights as constants (needed for the x86 int8 passes of
            PT2E and torchao, and for prepacked float weights).
        dynamic: ``None`` (compile for the first shape, then once more with the changed
            dimensions dynamic), ``True`` (dynamic from the start) or ``False`` (one graph per
            shape).

    Returns:
        A :class:`CompiledModel`; the first call compiles (seconds to minutes).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}: expected a torch.nn.Module")
    if isinstance(model, CompiledModel):
        raise ValueError("model is already a CompiledModel: compile the model inside it "
                         "(model.inner) with the settings you want")
    if dynamic not in (None, True, False):
        raise ValueError(f"dynamic={dynamic!r} is not supported: choose None, True or False")
    check_cpp_compiler()
    if model.training:
        model.eval()
    return CompiledModel(model, freezing=freezing, dynamic=dynamic)
