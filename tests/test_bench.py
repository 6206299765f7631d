"""Tests for quantbook.bench: every method the book teaches, run on a tiny workload."""

import dataclasses
import itertools

import pytest
import torch
from conftest import make_gpt
from test_sweep import FakeCompiled  # a stand-in for inductor: compiling takes minutes here

from quantbook import bench, choose, explore_choice
from quantbook.machine import machine_report
from quantbook.methods import MethodConfig
from quantbook.records import FLOAT_FAMILY, BenchRecord, load_records, save_records
from quantbook.sweep import Workload


@pytest.fixture(scope="module")
def workload():
    model = make_gpt(vocab_size=32, n_layer=1, n_embd=64)
    ids = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    # contiguous: eager quantized embeddings refuse strided index tensors
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def loss(m):
        with torch.no_grad():
            return float(m(inputs, targets)[1])

    return Workload(name="gpt", model=model, metric="loss", evaluate=loss,
                    run=lambda m: m(ids), calibration=[ids[:2], ids[2:]],
                    linear_targets=("attention", "ffn", "head"))


def test_bench_methods_are_configs_on_the_workloads_linears(workload):
    table = bench.bench_methods(workload)
    assert len(table) == 16 and len(set(table.values())) == 16  # no method twice
    for label, config in table.items():
        assert isinstance(config, MethodConfig), label
        groups = set(config.targets)
        expected = set(workload.linear_targets) | ({"embeddings"} if "with embeddings" in label
                                                   else set())
        assert groups == expected, label
        assert explore_choice.family_color(config.family) in explore_choice.FAMILY_COLORS.values()


def test_run_workload_records(workload):
    only = ["weight-only int4", "dynamic int8 per-tensor", "static int8 (min-max)",
            "torchao int8 dynamic"]
    records = bench.run_workload(workload, only=only, warmup=1, repeats=2)
    assert all(type(r) is BenchRecord for r in records)
    assert [r.method for r in records] == ["float32", *only]
    assert [r.family for r in records] == [FLOAT_FAMILY, "weight-only (quantbook)",
                                           "dynamic (eager)", "static (eager)",
                                           "dynamic (torchao)"]
    base, int4, dyn, stat, ao = records
    assert base.size_ratio == 1.0 and base.latency_ms > 0 and base.speedup == 1.0
    # 4-bit packed codes with one float32 scale per row of 64 inputs: 4/32 + 32/(64*32)
    assert int4.quantized_bytes_ratio < 0.20
    assert dyn.quantized_bytes_ratio < 0.40  # int8 codes plus packing overhead
    assert int4.size_bytes < dyn.size_bytes < base.size_bytes
    for r in (int4, dyn, stat, ao):
        assert r.converted == 7  # q, k, v, out, fc_in, fc_out, lm_head
        assert r.speedup > 0 and r.threads >= 1 and r.float_latency_ms > 0
        assert r.speedup == pytest.approx(r.float_latency_ms / r.latency_ms)
        assert abs(r.value - base.value) < 0.5  # still the same model, roughly
        assert r.float_value == base.value and r.metric == "loss" and r.model == "gpt"


def test_unknown_method_and_model(workload):
    with pytest.raises(ValueError, match=r"only=\['nope'\] names no method of gpt: choose from "
                                         r"\['weight-only int8', 'weight-only int4'"):
        bench.run_workload(workload, only=["nope"])
    with pytest.raises(ValueError, match=r"models=\['bert'\] is not supported: choose from "
                                         r"\('gpt', 'minilm'\)"):
        bench.run_bench(["bert"])
    with pytest.raises(ValueError, match=r"models=\[\] is not supported"):
        bench.run_bench([])
    with pytest.raises(ValueError, match=r"only=\['mixed RTN int2/3/4/8 group32 \(int3 bytes\)'\] "
                                         r"names no method of minilm: choose from"):
        bench.run_bench(only=["mixed RTN int2/3/4/8 group32 (int3 bytes)"])
    with pytest.raises(ValueError, match=r"chapters=\['7'\] is not supported: choose from"):
        bench.run_bench("minilm", chapters=["7"])
    with pytest.raises(ValueError, match=r"model='bert' is not supported: choose from"):
        bench.workload("bert")


def test_one_method_name_as_a_string(workload):
    records = bench.run_workload(workload, only="weight-only int4", timed=False)
    assert [r.method for r in records] == ["float32", "weight-only int4"]


def test_format_table(workload):
    records = bench.run_workload(workload, only=["dynamic float16"], warmup=1, repeats=1)
    table = bench.format_table(records)
    lines = table.splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    assert lines[2].startswith("gpt     float32 ") and "100.0%" in lines[2]
    assert "dynamic float16" in lines[3] and f"{records[1].speedup:.2f}x" in lines[3]
    untimed = bench.format_table(bench.run_workload(workload, only=["dynamic float16"],
                                                    timed=False))
    assert "x " not in untimed.splitlines()[3]  # no speed-up column for untimed records


def test_every_method_runs_and_converts_every_target(workload):
    records = bench.run_workload(workload, warmup=0, repeats=1)
    assert [r.method for r in records[1:]] == list(bench.bench_methods(workload))
    for r in records[1:]:
        # 7 Linears; the variants that quantize embeddings add tok_emb and pos_emb
        with_embeddings = "embeddings" in r.method
        assert r.converted == (9 if with_embeddings else 7), r.method
        assert r.family == bench.bench_methods(workload)[r.method].family


def test_untimed_run_reproduces_sizes_and_quality_of_a_timed_one(workload):
    only = ["weight-only int4", "dynamic int8 per-tensor"]
    timed = bench.run_workload(workload, only=only, warmup=0, repeats=1)
    untimed = bench.run_workload(workload, only=only, timed=False)
    for a, b in zip(timed, untimed, strict=True):
        assert (a.size_bytes, a.value) == (b.size_bytes, b.value)
        assert b.latency_ms is None
    assert untimed[1].speedup is None and untimed[0].speedup is None


def test_results_round_trip_with_the_machine(workload, tmp_path):
    records = bench.run_workload(workload, only=["dynamic float16"], timed=False)
    path = save_records(records, tmp_path / "r.json", machine=machine_report(), repeats=3,
                        seconds=1)
    meta, loaded = load_records(path)
    assert loaded == records
    assert meta["repeats"] == 3 and meta["machine"]["torch_version"] == torch.__version__


def test_secondary_quality_figures_are_recorded(workload):
    def quality(m):
        return {"loss": workload.evaluate(m), "loss_x2": 2 * workload.evaluate(m)}

    with_dict = dataclasses.replace(workload, evaluate=quality)
    base, dyn = bench.run_workload(with_dict, only=["dynamic int8 per-tensor"], timed=False)
    assert dyn.secondary == {"loss_x2": pytest.approx(2 * dyn.value)}
    assert base.secondary["loss_x2"] == pytest.approx(2 * base.value)
    assert "loss_x2 " in bench.format_table([base, dyn])
    missing = dataclasses.replace(workload, evaluate=lambda m: {"other": 1.0})
    with pytest.raises(KeyError, match="without metric='loss'"):
        bench.run_workload(missing, only=["dynamic float16"], timed=False)


def test_committed_results_are_complete():
    meta, records = load_records(bench.COMMITTED)
    assert {"machine", "created", "repeats", "seconds"} <= set(meta)
    reference = Workload("gpt", None, "perplexity", None)
    methods = bench.bench_methods(reference)
    for model in bench.MODELS:
        chosen = choose.model_records(records, model)
        basics = chosen[:len(methods) + 1]  # then any later chapter's rows (make bench)
        assert [r.method for r in basics] == ["float32", *methods]
        assert [r.family for r in basics[1:]] == [c.family for c in methods.values()]
        assert {r.method for r in chosen} <= set(bench.row_chapters(model))
        assert chosen[0].family == FLOAT_FAMILY and chosen[0].speedup == 1.0
        assert all(r.latency_ms > 0 and r.float_latency_ms > 0 for r in chosen)
    for a, b in itertools.combinations(records, 2):
        assert a.key != b.key
    assert {r.metric for r in records} == set(choose.LOWER_IS_BETTER)


def test_the_latest_run_is_not_the_committed_one():
    assert bench.LATEST.parts[-3:] == ("_build", "bench", "results.json")
    assert bench.COMMITTED.parts[-3:] == ("quantbook", "results", "bench.json")


# ------------------------------------------------------------- the chapters' rows


def test_every_chapter_adds_rows_with_unique_labels(workload):
    chapters = bench.bench_chapters(workload)
    assert list(chapters) == list(bench.CHAPTERS) and all(chapters.values())
    labels = [label for rows in chapters.values() for label in rows]
    assert len(labels) == len(set(labels)) == len(bench.row_chapters("gpt")) - 2
    basics = {k: v for c in bench.BASIC_CHAPTERS for k, v in chapters[c].items()}
    assert basics == bench.bench_methods(workload)
    assert list(basics) == list(bench.bench_methods(workload))  # the committed run's order
    for chapter, rows in chapters.items():
        for label, config in rows.items():
            assert isinstance(config, MethodConfig), label
            assert bench.row_chapters("gpt")[label] == chapter[:2]
    assert {"SmoothQuant a=0.9, static int8", "GPTQ int4 group32 act-order"} <= set(labels)
    assert list(chapters["06_compiled_int8"]) == ["torchao int8 dynamic, compiled",
                                                  "PT2E static int8, compiled"]
    # the GPT's mixed plan is chapter 08's, read from its committed results
    assert not any(k.startswith("mixed") for k in bench.row_chapters("minilm"))


def test_new_eager_rows_run_in_the_eager_sweep(workload):
    only = ["SmoothQuant a=0.9, static int8", "GPTQ int4 group32 act-order"]
    records = bench.run_workload(workload, only=only, timed=False)
    assert [r.method for r in records] == ["float32", *only]
    assert [r.family for r in records[1:]] == [c.family for c in
                                               (bench.bench_chapters(workload)
                                                ["07_activation_outliers"][only[0]],
                                                bench.bench_chapters(workload)
                                                ["08_below_8_bits"][only[1]])]
    for r in records[1:]:
        assert r.converted == 7 and abs(r.value - records[0].value) < 0.5, r.method


def test_compiled_rows_run_in_a_compiled_sweep_after_their_float_row(workload, monkeypatch):
    from quantbook import sweep

    monkeypatch.setattr(sweep.inductor, "compile_model", FakeCompiled)
    monkeypatch.setattr(bench.inductor, "check_cpp_compiler", lambda: "c++")
    only = ["weight-only int4", "torchao int8 dynamic, compiled"]
    records = bench.run_workload(workload, only=only, warmup=0, repeats=1)
    assert [r.method for r in records] == ["float32", "weight-only int4", "float32 compiled",
                                           "torchao int8 dynamic, compiled"]
    base, _, twin, ao = records
    assert twin.family == "float32 (compiled)" and twin.value == base.value
    assert ao.compile_s == 0.5 and ao.speedup_vs_compiled > 0 and ao.converted == 7
    assert isinstance(ao.compiled_float_latency_ms, float) and twin.compile_s == 0.5
    assert base.speedup == 1.0 and twin.speedup_vs_compiled == 1.0
    table = bench.format_table(records, bench.row_chapters("gpt"))
    assert [line.split()[1] for line in table.splitlines()[2:]] == [
        "float32", "03", "06", "06"]
    # compiled rows: the speed-up over float32 compiled and the compile seconds
    assert "speedup vs comp. compile s  metric" in table.splitlines()[0]
    last = table.splitlines()[-1]
    assert last.endswith(f"{ao.speedup_vs_compiled:.2f}x         0  loss {ao.value:.4f}")
    assert "x         " in table.splitlines()[3]  # an eager row leaves both empty


def test_without_a_compiler_compiled_rows_fail_before_any_work(workload, monkeypatch):
    def no_compiler():
        raise RuntimeError("torch.compile on the CPU needs a C++ compiler")

    def no_sweep(*args, **kwargs):
        raise AssertionError("a sweep started")

    monkeypatch.setattr(bench.inductor, "check_cpp_compiler", no_compiler)
    monkeypatch.setattr(bench, "Sweep", no_sweep)
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        bench.run_workload(workload, only=["dynamic float16", "PT2E static int8, compiled"])


def test_chapters_choose_the_rows_and_their_errors(workload):
    with pytest.raises(ValueError, match=r"chapters=\['09'\] is not supported: choose from "
                                         r"\('03_weight_quantization', "):
        bench.run_workload(workload, chapters=["09"])
    with pytest.raises(ValueError, match=r"chapters=\[\] is not supported"):
        bench.run_workload(workload, chapters=[])
    with pytest.raises(ValueError, match=r"only=\['AWQ int5'\] names no method of gpt: choose from "
                                         r"\[.*'AWQ int4 group32'"):
        bench.run_workload(workload, only=["AWQ int5"])
    records = bench.run_workload(workload, chapters="05_static_quantization", timed=False)
    assert [r.method for r in records] == ["float32", "static int8 (histogram)",
                                           "static int8 (min-max)"]
