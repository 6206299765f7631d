import importlib.metadata
import pathlib
import platform
import re
import subprocess
import sys

import torch

from quantbook import machine
from quantbook.machine import FEATURE_FLAGS, cpu_features, cpu_model, format_report, machine_report

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512vnni amx_bf16 amx_int8
"""
# Linux >= 5.x spells it avx512_vnni; AVX-VNNI is the 256-bit variant of client CPUs
X86_VNNI_CPUINFO = "model name\t: AMD EPYC\nflags\t\t: avx2 avx512f avx512_vnni avx_vnni\n"
ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp
CPU implementer\t: 0x41
"""


def test_cpu_model_from_cpuinfo_and_fallbacks(monkeypatch):
    assert cpu_model(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_model(ARM_CPUINFO) == "arm"  # ARM kernels often print no model name
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_model("") == "aarch64"


def test_cpu_features_x86():
    assert cpu_features(X86_CPUINFO) == {
        "avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False,
        "amx_int8": True, "asimd": False, "asimddp": False,
    }
    features = cpu_features(X86_VNNI_CPUINFO)
    assert features["avx512_vnni"] and features["avx_vnni"] and not features["amx_int8"]


def test_int8_dot_product_from_flags():
    assert machine.has_int8_dot_product(X86_CPUINFO)  # avx512vnni and amx_int8
    assert machine.has_int8_dot_product(X86_VNNI_CPUINFO)
    assert machine.has_int8_dot_product(ARM_CPUINFO)  # asimddp
    avx2_only = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert not machine.has_int8_dot_product(avx2_only)


def test_int8_dot_product_off_when_fbgemm_is_capped_at_avx2(monkeypatch):
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "avx2")
    assert not machine.has_int8_dot_product(X86_CPUINFO)  # the kernels will not use VNNI
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512_E1")
    assert machine.has_int8_dot_product(X86_CPUINFO)


def test_makefile_runs_the_notebooks_under_the_reproducible_settings():
    makefile = (pathlib.Path(__file__).parents[1] / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if x.startswith("REPRODUCE :="))
    assert dict(kv.split("=") for kv in line.split(":=")[1].split()) == machine.REPRODUCIBLE
    for target in ("nbval:", "notebooks:"):
        recipe = makefile.split("\n" + target)[1].split("\n\n")[0]
        assert "$(REPRODUCE)" in recipe, target


def test_cpu_features_arm():
    features = cpu_features(ARM_CPUINFO)
    assert features["asimd"] and features["asimddp"]
    assert not any(features[name] for name in ("avx2", "avx512f", "avx512_vnni", "amx_int8"))


def test_cpu_features_without_cpuinfo(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "arm64")  # e.g. Apple silicon
    assert cpu_features("") == {name: name == "asimd" for name in FEATURE_FLAGS}
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert not any(cpu_features("").values())


def test_missing_proc_cpuinfo_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "no_such_file")
    monkeypatch.setattr(platform, "processor", lambda: "i386")
    assert cpu_model() == "i386"
    assert set(cpu_features()) == set(FEATURE_FLAGS)


def test_real_features_agree_with_torch_dispatch():
    features = cpu_features()
    assert set(features) == set(FEATURE_FLAGS)
    assert all(isinstance(v, bool) for v in features.values())
    capability = torch.backends.cpu.get_cpu_capability()  # what torch's kernels dispatch to
    if capability.startswith("AVX512"):
        assert features["avx512f"] and features["avx2"]
    elif capability == "AVX2":
        assert features["avx2"]


def test_machine_report_contents():
    report = machine_report()
    assert report["torch_version"] == torch.__version__
    assert report["torchao_version"] == importlib.metadata.version("torchao")
    assert report["torch_threads"] == torch.get_num_threads()
    assert report["quantized_engine"] in report["quantized_engines"]
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["logical_cores"] >= 1


def test_machine_report_does_not_import_torchao():
    script = (
        "import sys; from quantbook.machine import machine_report; machine_report(); "
        "print('torchao' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert done.stderr == ""


def test_format_report_aligns_values():
    report = {
        "cpu_model": "Test CPU", "logical_cores": 4, "torch_threads": 2,
        "torch_version": "2.13.0", "torchao_version": "0.18.0",
        "quantized_engines": ["x86", "qnnpack"], "quantized_engine": "x86",
        "cpu_capability": "AVX2", "features": {"avx2": True, "avx512f": False},
        "platform": "Linux x86_64, Python 3.11.7",
    }
    lines = format_report(report).splitlines()
    assert lines[0] == "CPU                Test CPU (4 logical cores, torch uses 2 threads)"
    assert lines[1] == "int8 features      avx2"
    starts = {re.search(r"\S+(\s{2,})", line).end() for line in lines}
    assert starts == {19}  # every value starts in the same column
    assert "quantized engine   x86 (supported: x86, qnnpack)" in lines
    report["features"] = {"avx2": False}
    assert "int8 features      none detected" in format_report(report).splitlines()
    report["torch_threads"] = 1
    assert format_report(report).splitlines()[0].endswith("torch uses 1 thread)")
