"""Tests for quantbook.measure against torch.save byte counts and a fake clock."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from torch import nn

from quantbook import measure
from quantbook.machine import cpu_model
from quantbook.measure import (
    Timing,
    compare_latency,
    size_bytes,
    speedup,
    tensor_bytes,
    time_fn,
)

AO_DEPRECATED = "ignore:torch.ao.quantization is deprecated:DeprecationWarning"
QTENSOR_DEPRECATED = (
    "ignore:torch.quantize_per_tensor, torch.quantize_per_channel and other quantized:UserWarning"
)


def test_size_of_a_float_linear_is_its_data_plus_small_overhead():
    layer = nn.Linear(256, 256)
    data_bytes = 4 * (256 * 256 + 256)
    assert data_bytes < size_bytes(layer) < data_bytes + 4096


def test_size_counts_buffers_that_parameters_miss():
    module = nn.BatchNorm1d(1000)  # running mean/var are buffers, not parameters
    assert size_bytes(module) > 4 * (4 * 1000)


@pytest.mark.filterwarnings(AO_DEPRECATED)
@pytest.mark.filterwarnings(QTENSOR_DEPRECATED)
def test_dynamic_quantized_linear_hides_its_weights_from_parameters():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    quantized = torch.ao.quantization.quantize_dynamic(mlp, {nn.Linear}, dtype=torch.qint8)
    float_params = sum(p.numel() for p in mlp.parameters())
    # the int8 weights live in packed params, so parameters() sees nothing at all
    assert sum(p.numel() for p in quantized.parameters()) == 0
    ratio = size_bytes(quantized) / size_bytes(mlp)
    assert 0.24 < ratio < 0.30  # int8 weights (1/4) plus float32 biases and scales
    assert size_bytes(quantized) > float_params  # at least one byte per weight


def test_size_bytes_rejects_a_state_dict():
    with pytest.raises(TypeError, match=r"model is a OrderedDict: expected a torch.nn.Module"):
        size_bytes(nn.Linear(2, 2).state_dict())
    with pytest.raises(TypeError, match=r"model is a OrderedDict: expected a torch.nn.Module"):
        tensor_bytes(nn.Linear(2, 2).state_dict())


def test_size_of_some_modules_is_the_file_of_their_state_dicts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    one = size_bytes(model, ["0"])
    assert 4 * (64 * 64 + 64) < one < 4 * (64 * 64 + 64) + 4096
    both = size_bytes(model, ["0", "2"])
    assert both - one == pytest.approx(4 * (64 * 8 + 8), abs=1024)  # one more layer's data
    assert size_bytes(model, []) < 2048  # an empty file still has its headers
    assert size_bytes(model, iter(["0"])) == one  # any iterable of names


def test_tensor_bytes_counts_the_data_of_the_state_dict():
    model = nn.Sequential(nn.Linear(10, 4), nn.BatchNorm1d(4))
    # Linear: 44 float32; BatchNorm: weight, bias, running mean and var (16 float32) and an
    # int64 counter of batches
    assert tensor_bytes(model) == 4 * (44 + 16) + 8
    assert tensor_bytes(nn.Linear(10, 4).half()) == 2 * 44
    assert size_bytes(model) > tensor_bytes(model)  # the file adds names and headers


@pytest.mark.parametrize("measure_fn", [size_bytes, tensor_bytes])
def test_a_meta_model_has_no_size(measure_fn):
    with pytest.raises(ValueError, match=r"model has tensors on the meta device, which hold no "
                                         r"data, so it has no size to measure: load its weights "
                                         r"first"):
        measure_fn(nn.Linear(4, 4).to("meta"))


def test_one_module_name_as_a_string():
    model = nn.ModuleDict({"head": nn.Linear(64, 64)})
    with pytest.raises(TypeError, match=r"modules='head' is a single string: pass a list"):
        size_bytes(model, "head")


def test_compare_latency_alternates_and_excludes_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("float", "int8", "int4")}
    result = compare_latency(fns, warmup=2, repeats=3)
    assert calls == ["float", "int8", "int4"] * 5  # 2 warm-up rounds + 3 timed rounds
    assert list(result) == ["float", "int8", "int4"]
    for timing in result.values():
        assert timing.n_repeats == 3 and timing.warmup == 2


def test_statistics_come_from_timed_calls_only(monkeypatch):
    # a fake clock: each call of the function advances it by a chosen number of milliseconds
    clock = {"ns": 0}
    durations_ms = iter([1000.0, 1000.0] + [float(k) for k in range(1, 11)])

    def fn():
        clock["ns"] += int(next(durations_ms) * 1e6)

    monkeypatch.setattr(measure, "perf_counter_ns", lambda: clock["ns"])
    timing = time_fn(fn, warmup=2, repeats=10)
    timed = np.arange(1.0, 11.0)  # the 1000 ms warm-up calls must not appear
    assert timing.median_ms == pytest.approx(np.median(timed))
    assert timing.p10_ms == pytest.approx(np.percentile(timed, 10))
    assert timing.p90_ms == pytest.approx(np.percentile(timed, 90))
    assert timing.iqr_ms == pytest.approx(np.percentile(timed, 75) - np.percentile(timed, 25))


def test_timing_records_the_conditions_and_runs_in_inference_mode():
    modes = []
    timing = time_fn(lambda: modes.append(torch.is_inference_mode_enabled()), repeats=2)
    assert modes == [True] * 5
    assert timing.threads == torch.get_num_threads()
    assert timing.cpu == cpu_model()
    assert timing.p10_ms <= timing.median_ms <= timing.p90_ms
    with pytest.raises(dataclasses.FrozenInstanceError):
        timing.median_ms = 0.0


def test_speedup_is_the_ratio_of_medians():
    def make(median_ms):
        return Timing(median_ms, median_ms, median_ms, 0.0, 5, 1, 1, "cpu")

    assert speedup(make(12.0), make(4.0)) == pytest.approx(3.0)
    assert speedup(make(2.0), make(4.0)) == pytest.approx(0.5)
    with pytest.raises(TypeError, match=r"other is a float: expected a Timing"):
        speedup(make(1.0), 1.0)
    with pytest.raises(ValueError, match=r"other.median_ms=0.0 must be positive"):
        speedup(make(1.0), make(0.0))


def test_compare_latency_stops_at_max_s_after_min_repeats():
    calls = []

    def slow(name):
        calls.append(name)
        time.sleep(0.02)

    fns = {name: (lambda name=name: slow(name)) for name in ("float", "int8")}
    # each timed round takes about 40 ms: past 0.1 s after the third round, kept to 4 by min
    result = compare_latency(fns, warmup=1, repeats=10, max_s=0.1, min_repeats=4)
    assert {t.n_repeats for t in result.values()} == {4}
    assert len(calls) == 2 * (1 + 4)
    result = compare_latency(fns, warmup=0, repeats=10, max_s=0.01, min_repeats=2)
    assert {t.n_repeats for t in result.values()} == {2}  # min_repeats rounds, then stop
    result = compare_latency(fns, warmup=0, repeats=3, max_s=60)
    assert {t.n_repeats for t in result.values()} == {3}  # never more than repeats
    for bad in (0, -1.0, True, "10"):
        with pytest.raises(ValueError, match=rf"max_s={bad!r} is not supported: pass seconds"):
            compare_latency(fns, repeats=2, max_s=bad)
    with pytest.raises(ValueError, match=r"min_repeats=0 is not supported: choose an integer"):
        compare_latency(fns, repeats=2, min_repeats=0)


def test_validation_errors():
    with pytest.raises(ValueError, match=r"repeats=0 is not supported: choose an integer >= 1"):
        time_fn(lambda: None, repeats=0)
    with pytest.raises(ValueError, match=r"warmup=-1 is not supported: choose an integer >= 0"):
        time_fn(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match=r"repeats=2.5 is not supported"):
        compare_latency({"a": lambda: None}, repeats=2.5)
    with pytest.raises(ValueError, match=r"fns=\{\} is not supported: pass a non-empty dict"):
        compare_latency({})
    with pytest.raises(TypeError, match=r"fns\['a'\] is a int: expected a callable"):
        compare_latency({"a": 1})
    with pytest.raises(TypeError, match=r"fn is a Tensor: expected a zero-argument callable"):
        time_fn(torch.ones(2))


def test_num_threads_restores_the_setting_even_on_error():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with measure.num_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), measure.num_threads(other):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n=0 is not supported"), measure.num_threads(0):
        pass
