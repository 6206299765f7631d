"""Tests for quantbook.sweep: the one path from a config to a BenchRecord, cached and timed."""

import dataclasses
import warnings

import pytest
import torch
from conftest import make_gpt

from quantbook import measure, sweep
from quantbook.methods import (
    DynamicConfig,
    QuantReport,
    StaticConfig,
    WeightOnlyConfig,
    quantize,
)
from quantbook.quiet import silence_known_noise
from quantbook.records import FLOAT_FAMILY, BenchRecord


@pytest.fixture(scope="module")
def model():
    return make_gpt(vocab_size=32, n_layer=1, n_embd=64)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))


def make_workload(model, ids, calls=None, **overrides):
    """A workload whose metric is the next-token loss; ``calls`` counts the evaluations."""
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def loss(m):
        if calls is not None:
            calls.append(m)
        with torch.no_grad():
            return float(m(inputs, targets)[1])

    fields = dict(name="tiny", model=model, metric="loss", evaluate=loss, run=lambda m: m(ids),
                  calibration=[ids[:2], ids[2:]], linear_targets=("attention", "ffn", "head"),
                  timed_inputs=[ids])
    return sweep.Workload(**(fields | overrides))


# ------------------------------------------------------------------ Workload


def test_quality_reads_a_float_or_a_dict(model, ids):
    workload = make_workload(model, ids)
    value, secondary = workload.quality(model)
    assert value == workload.evaluate(model) and secondary == {}
    both = dataclasses.replace(workload, evaluate=lambda m: {"loss": 1, "cosine_mean": 0.5})
    assert both.quality(model) == (1.0, {"cosine_mean": 0.5})
    missing = dataclasses.replace(workload, evaluate=lambda m: {"other": 1.0})
    with pytest.raises(KeyError, match=r"evaluate returned \['other'\] without metric='loss': "
                                       r"return the metric under its name"):
        missing.quality(model)


def test_describe_reads_the_shapes_of_the_batches(model, ids):
    workload = make_workload(model, ids)
    assert workload.describe() == ("timed call: 1 batch of token ids, 4x16; "
                                   "calibration: 2 batches of token ids, 2x16 and 2x16")
    assert sweep._shapes([{"input_ids": torch.zeros(3, 7)}] * 3) == (
        "3 batches of token ids, 3x7, 3x7 and 3x7")
    bare = sweep.Workload("bare", model, "loss", workload.evaluate)
    assert bare.describe() == "timed call: none; calibration: none"


# ------------------------------------------------------------------ records


def test_float_record_first_then_one_record_per_config(model, ids):
    workload = make_workload(model, ids)
    configs = [WeightOnlyConfig(bits=8, targets=workload.linear_targets),
               DynamicConfig(targets=workload.linear_targets)]
    runner = sweep.Sweep(workload)
    records = runner.run(configs)
    assert [r.method for r in records] == ["float32", "weight-only int8 per-channel",
                                           "dynamic int8 per-tensor"]
    base = records[0]
    assert base == BenchRecord(
        model="tiny", method="float32", family=FLOAT_FAMILY, metric="loss",
        value=workload.evaluate(model), float_value=workload.evaluate(model),
        size_bytes=measure.size_bytes(model), size_ratio=1.0)
    for config, r in zip(configs, records[1:], strict=True):
        quantized, report = runner.quantize(config)
        converted = list(report.converted)
        assert r.family == config.family and r.converted == len(converted) == 7
        assert r.value == workload.evaluate(quantized) and r.float_value == base.value
        assert r.size_bytes == measure.size_bytes(quantized)
        assert r.size_ratio == r.size_bytes / base.size_bytes
        assert r.quantized_bytes_ratio == (measure.size_bytes(quantized, converted)
                                           / measure.size_bytes(model, converted))
        assert r.latency_ms is None and r.speedup is None and r.float_latency_ms is None
    # int8 codes: about a quarter of the float bytes of the converted modules
    assert 0.25 < records[1].quantized_bytes_ratio < 0.30
    assert 0.25 < records[2].quantized_bytes_ratio < 0.40


def test_labels_come_from_the_mapping_or_the_config(model, ids):
    runner = sweep.Sweep(make_workload(model, ids))
    records = runner.run({"int4": WeightOnlyConfig(bits=4), "int8": WeightOnlyConfig(bits=8)})
    assert [r.method for r in records] == ["float32", "int4", "int8"]
    assert runner.record(WeightOnlyConfig(bits=4)).method == "weight-only int4 per-channel"
    assert runner.record(WeightOnlyConfig(bits=4), "mine").method == "mine"
    seen = []
    runner.run([DynamicConfig()], progress=seen.append)
    assert seen == ["dynamic int8 per-tensor"]
    assert runner.run([]) == [runner.float_record()]


def test_everything_is_built_and_measured_once(model, ids):
    calls, built = [], []

    def counting_quantize(m, config, batches):
        built.append(config)
        return quantize(m, config, batches)

    runner = sweep.Sweep(make_workload(model, ids, calls), quantize_fn=counting_quantize)
    config = DynamicConfig(targets=["attention"])
    first = runner.quantize(config)
    assert runner.quantize(DynamicConfig(targets=("attention",))) is first  # an equal config
    assert runner.quantized(config) is first[0]
    record = runner.record(config)
    assert runner.record(config) is record
    runner.run([config, DynamicConfig(granularity="channel")])
    runner.run([config])
    assert built == [config, DynamicConfig(granularity="channel")]
    assert len(calls) == 3  # the float model once, each quantized model once
    assert runner.float_record() is runner.float_record()


def test_the_quantize_fn_gets_the_calibration_batches(model, ids):
    seen = []

    def spy(m, config, batches):
        seen.append((m, config, batches))
        return quantize(m, config, batches)

    workload = make_workload(model, ids)
    runner = sweep.Sweep(workload, quantize_fn=spy)
    with warnings.catch_warnings():
        silence_known_noise()
        record = runner.record(StaticConfig(observer="minmax"))
    assert seen == [(model, StaticConfig(observer="minmax"), workload.calibration)]
    assert record.family == "static (eager)" and record.converted == 6


def test_weight_only_configs_share_packed_modules(model, ids):
    runner = sweep.Sweep(make_workload(model, ids))
    both = runner.quantized(WeightOnlyConfig(targets=("attention", "ffn")))
    ffn = runner.quantized(WeightOnlyConfig(targets=("ffn",)))
    assert ffn.blocks[0].mlp.fc_in is both.blocks[0].mlp.fc_in
    assert both.ln_f.weight is model.ln_f.weight  # the float tensors too: nothing is copied
    assert len(runner.packed) == 6
    eight = runner.quantized(WeightOnlyConfig(bits=8, targets=("ffn",)))
    assert eight.blocks[0].mlp.fc_in is not ffn.blocks[0].mlp.fc_in
    alone, _ = quantize(model, WeightOnlyConfig(targets=("ffn",)))
    assert torch.equal(alone(ids)[0], ffn(ids)[0])  # sharing changes nothing in the result


def test_measure_a_model_built_another_way(model, ids):
    with warnings.catch_warnings():
        silence_known_noise()
        from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic
        quantized = torch_quantize_dynamic(model, {"lm_head"}, dtype=torch.qint8)
    report = QuantReport("torch.ao by hand", "dynamic (eager)", converted=("lm_head",))
    runner = sweep.Sweep(make_workload(model, ids))
    r = runner.measure("by hand", quantized, report)
    assert (r.method, r.family, r.converted) == ("by hand", "dynamic (eager)", 1)
    assert r.size_bytes == measure.size_bytes(quantized)
    assert r.quantized_bytes_ratio == (measure.size_bytes(quantized, ["lm_head"])
                                       / measure.size_bytes(model, ["lm_head"]))


# ------------------------------------------------------------------ timing


@pytest.fixture
def fake_clock(monkeypatch, model):
    """Every run of the float model takes 2 ms, every run of another model 1 ms."""
    clock = {"ns": 0}
    monkeypatch.setattr(measure, "perf_counter_ns", lambda: clock["ns"])

    def run(m):
        clock["ns"] += 2_000_000 if m is model else 1_000_000

    return run


def test_timed_records_carry_the_float_latency_of_their_own_rounds(model, ids, fake_clock):
    runner = sweep.Sweep(make_workload(model, ids, run=fake_clock))
    records = runner.run([WeightOnlyConfig(), DynamicConfig()], timed=True, warmup=1, repeats=3)
    for r in records[1:]:
        assert (r.latency_ms, r.latency_p10_ms, r.latency_p90_ms) == (1.0, 1.0, 1.0)
        assert r.float_latency_ms == 2.0 and r.speedup == 2.0
        assert r.threads == torch.get_num_threads() and r.cpu
    base = records[0]
    assert (base.latency_ms, base.float_latency_ms, base.speedup) == (2.0, 2.0, 1.0)
    assert base.threads == records[1].threads and base.cpu == records[1].cpu
    assert {r.rounds for r in records} == {3}
    # the untimed record stays cached without latency; timing returns a new record each time
    assert runner.record(WeightOnlyConfig()).latency_ms is None
    assert runner.float_record().latency_ms is None
    # a round takes 3 ms here: a 5 ms bound ends each timing at the 3 rounds it keeps at least
    bounded = runner.run([DynamicConfig()], timed=True, warmup=1, repeats=10, max_s=0.005)
    assert {r.rounds for r in bounded} == {3} and bounded[1].speedup == 2.0
    assert {r.rounds for r in runner.run([DynamicConfig()], timed=True, warmup=0, repeats=10,
                                         max_s=0.1)} == {10}


def test_time_needs_a_run_call(model, ids):
    runner = sweep.Sweep(make_workload(model, ids, run=None))
    with pytest.raises(ValueError, match=r"workload 'tiny' has no run call to time: set "
                                         r"Workload\.run, or pass timed=False"):
        runner.record(WeightOnlyConfig(), timed=True)
    assert runner.run([WeightOnlyConfig()])[1].latency_ms is None  # untimed is fine


# ------------------------------------------------------------------ errors


def test_errors(model, ids):
    runner = sweep.Sweep(make_workload(model, ids))
    with pytest.raises(TypeError, match=r"workload is a GPT: expected a Workload"):
        sweep.Sweep(model)
    with pytest.raises(TypeError, match=r"configs holds a str: expected method configs such as "
                                        r"WeightOnlyConfig\(bits=4\)"):
        runner.run({"int4": "weight-only int4"})
    with pytest.raises(ValueError, match=r"configs repeats a label among \['weight-only int4 "
                                         r"per-channel', 'weight-only int4 per-channel'\]: give "
                                         r"each its own"):
        runner.run([WeightOnlyConfig(), WeightOnlyConfig(targets=["attention", "ffn"])])


def test_one_config_instead_of_a_list_is_refused_clearly(model, ids):
    with pytest.raises(TypeError, match=r"configs is a WeightOnlyConfig: pass a list"):
        sweep.Sweep(make_workload(model, ids)).run(WeightOnlyConfig())


def test_a_nan_float_metric_is_refused(model, ids):
    workload = make_workload(model, ids, evaluate=lambda m: float("nan"))
    with pytest.raises(ValueError, match=r"NaN for the float model"):
        sweep.Sweep(workload).run([WeightOnlyConfig()])


def test_sizes_without_evaluating_and_shared_packed_modules(model, ids):
    from quantbook.methods.packed import PackedLinear

    calls = []
    first = sweep.Sweep(make_workload(model, ids, calls), cache_weights=True)
    config = WeightOnlyConfig(bits=4)
    assert first.size_bytes(config) == measure.size_bytes(first.quantized(config))
    assert calls == []  # bytes need no evaluation
    layers = [m for m in first.quantized(config).modules() if isinstance(m, PackedLinear)]
    assert layers and all(m.cache_weight for m in layers)
    second = sweep.Sweep(make_workload(model, ids), packed=first.packed)
    assert second.quantized(config).blocks[0].attn.q_proj is not (
        first.quantized(config).blocks[0].attn.q_proj)  # cache_weight differs: packed anew
    third = sweep.Sweep(make_workload(model, ids), packed=first.packed, cache_weights=True)
    assert third.quantized(config).blocks[0].attn.q_proj is (
        first.quantized(config).blocks[0].attn.q_proj)
    with pytest.raises(TypeError, match=r"packed is a list: pass another sweep's packed dict"):
        sweep.Sweep(make_workload(model, ids), packed=[])


# ------------------------------------------------------------------ compiled sweeps


class FakeCompiled(torch.nn.Module):
    """Stands in for inductor's CompiledModel: the same calls and attributes, no compiler."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.first_call_s = model, None

    def forward(self, *args, **kwargs):
        if self.first_call_s is None:
            self.first_call_s = 0.5
        return self.inner(*args, **kwargs)


def test_a_compiled_sweep_adds_the_compiled_float_row_and_both_speedups(
        model, ids, monkeypatch):
    monkeypatch.setattr(sweep.inductor, "compile_model", FakeCompiled)
    clock = {"ns": 0}
    monkeypatch.setattr(measure, "perf_counter_ns", lambda: clock["ns"])

    def run(m):  # float eager 4 ms, float compiled 2 ms, a compiled quantized model 1 ms
        m(ids)  # the first call of a compiled model "compiles"
        eager = m is model
        clock["ns"] += 4_000_000 if eager else 2_000_000 if m.inner is model else 1_000_000

    calls = []
    runner = sweep.Sweep(make_workload(model, ids, calls=calls, run=run), compiled=True)
    records = runner.run({"dyn": DynamicConfig()}, timed=True, warmup=1, repeats=3)
    assert [r.method for r in records] == ["float32", "float32 compiled", "dyn"]
    base, twin, dyn = records
    assert isinstance(runner.quantized(DynamicConfig()), FakeCompiled)
    assert (dyn.latency_ms, dyn.float_latency_ms, dyn.compiled_float_latency_ms) == (1, 4, 2)
    assert (dyn.speedup, dyn.speedup_vs_compiled, dyn.compile_s) == (4.0, 2.0, 0.5)
    assert dyn.quantized_bytes_ratio < 0.5  # measured on the model inside the wrapper
    assert (twin.family, twin.latency_ms, twin.speedup, twin.speedup_vs_compiled) == (
        "float32 (compiled)", 2.0, 2.0, 1.0)
    assert twin.value == base.value and twin.compile_s == 0.5
    # quality is evaluated on the models inside the wrappers, never on a compiled one
    assert not any(isinstance(m, FakeCompiled) for m in calls)
    assert base.compile_s is None and base.speedup == 1.0
    with pytest.raises(TypeError, match=r"compiled='yes' is not supported: pass True or "
                                        r"False"):
        sweep.Sweep(make_workload(model, ids), compiled="yes")


def test_a_graph_without_the_converted_submodules_gets_no_bytes_ratio(model, ids):
    """An exported graph (PT2E) names its int8 weights differently: no per-module bytes."""
    runner = sweep.Sweep(make_workload(model, ids))
    report = QuantReport(label="x", family="y", converted=("blocks.0.mlp.fc_in",))
    assert runner.measure("x", model, report).quantized_bytes_ratio == pytest.approx(1.0)
    missing = QuantReport(label="x", family="y", converted=("_frozen_param0",))
    assert runner.measure("x", model, missing).quantized_bytes_ratio is None


# ------------------------------------------------------------------ quality measured elsewhere


def test_record_takes_a_quality_measured_elsewhere(model, ids):
    calls = []
    tiny = sweep.Sweep(make_workload(model, ids, calls))
    tiny.float_record()
    config = DynamicConfig(targets=("attention", "ffn", "head"))
    record = tiny.record(config, quality=(1.25, {"cosine_mean": 0.5}))
    assert (record.value, record.secondary) == (1.25, {"cosine_mean": 0.5})
    assert len(calls) == 1  # the float model only: the quantized one was not evaluated
    assert record.size_bytes == measure.size_bytes(tiny.quantized(config))
    assert tiny.record(config) == record  # kept
    with pytest.raises(ValueError, match=r"differs from the record of .* made before"):
        tiny.record(config, quality=(2.0, {}))
    with pytest.raises(TypeError, match=r"is not a \(value, secondary dict\) pair"):
        tiny.record(DynamicConfig(targets=("ffn",)), quality=1.25)
    with pytest.raises(ValueError, match=r"quality holds loss=nan: expected a number"):
        tiny.record(DynamicConfig(targets=("ffn",)), quality=(float("nan"), {}))
