"""Which machine produced these numbers? CPU model, int8 instruction sets, torch backends.

int8 speedups on a CPU depend on the instructions it has: AVX2 multiplies int8 pairs slowly
(``vpmaddubsw``), AVX-512 VNNI and AVX-VNNI fuse the multiply-accumulate into one instruction
(``vpdpbusd``), AMX multiplies whole int8 tiles, and on ARM the dot-product extension (``asimddp``)
plays the VNNI role. Every timing in the book is printed next to :func:`format_report`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# feature name -> the /proc/cpuinfo flags that spell it (kernels differ in spelling)
FEATURE_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),
    "amx_int8": ("amx_int8",),
    "asimd": ("asimd",),  # ARM NEON
    "asimddp": ("asimddp",),  # ARM int8 dot product (SDOT/UDOT)
}


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text()
    except OSError:  # not Linux, or /proc not mounted
        return ""


def _field(cpuinfo: str, names: tuple[str, ...]) -> str | None:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in names:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """Return the CPU's marketing name, e.g. ``"AMD EPYC 9654 96-Core Processor"``.

    Args:
        cpuinfo: text of ``/proc/cpuinfo``; ``None`` reads the real file. Where there is none
            (macOS, Windows) or it has no ``model name``, ``platform.processor()`` is used, then
            ``platform.machine()``.
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    name = _field(text, ("model name",))
    return name or platform.processor() or platform.machine() or "unknown"


def cpu_features(cpuinfo: str | None = None) -> dict[str, bool]:
    """Report the int8-relevant instruction sets of this CPU.

    Args:
        cpuinfo: text of ``/proc/cpuinfo``; ``None`` reads the real file. x86 lists features
            under ``flags``, ARM under ``Features``.

    Returns:
        feature -> present, for every key of :data:`FEATURE_FLAGS`. Without ``/proc/cpuinfo``
        only what the architecture guarantees is reported (NEON on 64-bit ARM); the rest reads
        ``False``, meaning "not known to be present".
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags_line = _field(text, ("flags", "features"))
    if flags_line is None:
        arm64 = platform.machine().lower() in ("arm64", "aarch64")
        return {name: (name == "asimd" and arm64) for name in FEATURE_FLAGS}
    flags = set(flags_line.lower().split())
    return {name: any(s in flags for s in spellings) for name, spellings in FEATURE_FLAGS.items()}


# FBGEMM (the eager int8 kernels on x86) reads this to cap the instruction set it uses
FBGEMM_ISA_ENV = "FBGEMM_ENABLE_INSTRUCTIONS"
# the settings under which the book's stored outputs are computed and compared (Makefile's
# `notebooks` and `nbval`): every x86-64 CPU with AVX2 then runs the same kernels - ATen's and
# inductor's vector code, FBGEMM's and oneDNN's int8 kernels - so results agree across AVX2,
# AVX-512 and VNNI machines; readers running a notebook themselves get their CPU's fastest kernels
REPRODUCIBLE = {"ATEN_CPU_CAPABILITY": "avx2", FBGEMM_ISA_ENV: "AVX2",
                "ONEDNN_MAX_CPU_ISA": "AVX2"}
# the quantized engines that run FBGEMM's kernels. Only they have the float16 dynamic Linear and
# the int8 Linear with a float output; qnnpack (ARM) and onednn lack both
FBGEMM_ENGINES = ("x86", "fbgemm")
# the instructions that multiply-accumulate int8 in one step (x86: VNNI or AMX; ARM: SDOT)
INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def fbgemm_engine() -> bool:
    """Whether the quantized engine in use runs FBGEMM's kernels (:data:`FBGEMM_ENGINES`).

    The book's int8 speed figures are FBGEMM's; chapters check them only where this holds.
    """
    return torch.backends.quantized.engine in FBGEMM_ENGINES


def has_int8_dot_product(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has a fused int8 dot-product instruction (see :data:`INT8_DOT_PRODUCT`).

    Quantized kernels (FBGEMM, oneDNN, QNNPACK) gain most from int8 where the CPU has one;
    with AVX2 alone, int8 matrix products run at about the speed of float32 ones. Chapters use
    this to state, and check, the condition a speed-up depends on.

    Returns ``False`` where ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` keeps FBGEMM on its AVX2
    kernels, whatever the CPU has.

    Args:
        cpuinfo: text of ``/proc/cpuinfo``; ``None`` reads the real file.
    """
    if os.environ.get(FBGEMM_ISA_ENV, "").strip().upper() == "AVX2":
        return False  # FBGEMM told to use its AVX2 kernels (`make nbval` does, see REPRODUCIBLE)
    features = cpu_features(cpuinfo)
    return any(features[name] for name in INT8_DOT_PRODUCT)


def _version(package: str) -> str:
    # importlib.metadata, not `import torchao`: importing torchao writes to stderr
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_report() -> dict:
    """Collect what a reader needs to compare our timings with theirs.

    Returns:
        A dict with ``cpu_model``, ``logical_cores``, ``torch_threads``, ``torch_version``,
        ``torchao_version``, ``quantized_engines`` (list), ``quantized_engine`` (in use),
        ``cpu_capability`` (the vector ISA torch's kernels dispatch to, e.g. ``"AVX512"``),
        ``features`` (see :func:`cpu_features`) and ``platform``.
    """
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchao_version": _version("torchao"),
        "quantized_engines": list(torch.backends.quantized.supported_engines),
        "quantized_engine": torch.backends.quantized.engine,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "features": cpu_features(),
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
    }


def format_report(report: dict) -> str:
    """Format :func:`machine_report` as a few aligned lines for a notebook to print.

    Example::

        CPU                AMD EPYC (2 logical cores, torch uses 2 threads)
        int8 features      avx2, avx512f, avx512_vnni
        ...
    """
    features = [name for name, present in report["features"].items() if present]
    rows = [
        ("CPU", f"{report['cpu_model']} ({report['logical_cores']} logical cores, "
                f"torch uses {report['torch_threads']} "
                f"thread{'s' if report['torch_threads'] != 1 else ''})"),
        ("int8 features", ", ".join(features) or "none detected"),
        ("torch CPU kernels", report["cpu_capability"]),
        ("quantized engine", f"{report['quantized_engine']} "
                             f"(supported: {', '.join(report['quantized_engines'])})"),
        ("versions", f"torch {report['torch_version']}, torchao {report['torchao_version']}"),
        ("platform", report["platform"]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)
