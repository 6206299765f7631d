"""Tests for quantbook.records: BenchRecord, strict JSON, atomic writes that never half-write."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from quantbook import records
from quantbook.records import BenchRecord, load_records, save_records, write_json_atomic


def record(method="dynamic int8 per-tensor", value=4.02, **overrides):
    fields = dict(model="gpt", method=method, family="dynamic (eager)", metric="perplexity",
                  value=value, float_value=4.0, size_bytes=981_318, size_ratio=0.29,
                  quantized_bytes_ratio=0.27, converted=25, secondary={"cosine_mean": 0.99},
                  latency_ms=10.0, latency_p10_ms=9.0, latency_p90_ms=11.0,
                  float_latency_ms=20.0, speedup=2.0, threads=1, cpu="AMD EPYC")
    return BenchRecord(**(fields | overrides))


def strict_json(text: str):
    """Parse ``text`` the way a strict reader does: bare NaN / Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"bare {constant} in the JSON")
    return json.loads(text, parse_constant=refuse)


def test_fields_key_and_quality():
    r = record()
    assert [f.name for f in dataclasses.fields(BenchRecord)] == [
        "model", "method", "family", "metric", "value", "float_value", "size_bytes",
        "size_ratio", "quantized_bytes_ratio", "converted", "secondary", "latency_ms",
        "latency_p10_ms", "latency_p90_ms", "float_latency_ms", "speedup", "threads", "cpu",
        "compile_s", "compiled_float_latency_ms", "speedup_vs_compiled", "rounds"]
    assert r.key == ("gpt", "dynamic int8 per-tensor")
    assert r.quality("perplexity") == 4.02 and r.quality("cosine_mean") == 0.99
    with pytest.raises(KeyError, match=r"'bleu' is not recorded for \('gpt', 'dynamic int8 "
                                       r"per-tensor'\): choose from \['perplexity', "
                                       r"'cosine_mean'\]"):
        r.quality("bleu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 1.0
    bare = BenchRecord("gpt", "float32", records.FLOAT_FAMILY, "perplexity", 4.0, 4.0, 10, 1.0)
    assert (bare.latency_ms, bare.speedup, bare.secondary, bare.converted) == (None, None, {}, 0)
    assert records.FLOAT_FAMILY == "float32"


def test_save_and_load_round_trip(tmp_path):
    rows = [record(method="float32", family="float32", value=4.0, quantized_bytes_ratio=None,
                   secondary={}), record(), record(method="untimed", latency_ms=None)]
    path = save_records(rows, tmp_path / "deep" / "run.json", machine={"cpu_model": "x"},
                        repeats=3, seconds=12.5)
    assert path == tmp_path / "deep" / "run.json"
    meta, loaded = load_records(path)
    assert loaded == rows
    assert all(type(r) is BenchRecord for r in loaded)
    assert set(meta) == {"created", "machine", "repeats", "seconds"}
    assert (meta["machine"], meta["repeats"], meta["seconds"]) == ({"cpu_model": "x"}, 3, 12.5)
    payload = strict_json(path.read_text())
    assert payload["records"][1] == dataclasses.asdict(rows[1])
    assert list(tmp_path.joinpath("deep").iterdir()) == [path]  # no temporary file left
    # more conditions of the run are stored beside them, never over them
    meta, _ = load_records(save_records(rows, path, machine={}, max_timing_s=10.0,
                                        compile_cache={"fxgraph_cache_hit": 2}))
    assert (meta["max_timing_s"], meta["compile_cache"]) == (10.0, {"fxgraph_cache_hit": 2})
    with pytest.raises(ValueError, match=r"settings \['created'\] would overwrite the run's "
                                         "own fields: rename them"):
        save_records(rows, path, machine={}, created="yesterday")


def test_nan_is_stored_as_null_and_read_back_as_nan(tmp_path):
    broken = record(value=float("nan"), float_value=4.0, speedup=float("inf"))
    path = save_records([broken], tmp_path / "r.json", machine={})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    stored = strict_json(text)["records"][0]
    assert stored["value"] is None and stored["speedup"] is None
    _, (loaded,) = load_records(path)
    assert math.isnan(loaded.value) and loaded.float_value == 4.0


def test_a_nan_secondary_figure_round_trips(tmp_path):
    noisy = record(secondary={"cosine_mean": float("nan")})
    _, (loaded,) = load_records(save_records([noisy], tmp_path / "r.json", machine={}))
    assert math.isnan(loaded.secondary["cosine_mean"])


def test_write_json_atomic_is_strict_json(tmp_path):
    path = write_json_atomic({"a": [1.5, float("nan"), (float("-inf"), 2)],
                              "b": {"c": np.float64("nan")}}, tmp_path / "x.json")
    assert strict_json(path.read_text()) == {"a": [1.5, None, [None, 2]], "b": {"c": None}}
    assert path.read_text().endswith("\n")


@pytest.mark.parametrize("bad", [object(), torch.tensor(1.0), {1, 2}, np.float32("nan")])
def test_a_failed_write_leaves_the_old_file_intact(tmp_path, bad):
    path = tmp_path / "run.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError, match=r"is not JSON serializable"):
        write_json_atomic({"records": [1, 2], "x": bad}, path)
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # the temporary file is gone


def test_a_failed_rename_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text('{"old": true}\n')

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        save_records([record()], path, machine={})
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    monkeypatch.undo()  # the disk has room again: the same call now writes
    save_records([record()], path, machine={})
    assert load_records(path)[1] == [record()]


def test_save_records_refuses_what_is_not_a_record(tmp_path):
    with pytest.raises(TypeError, match=r"records holds dict items: expected BenchRecord"):
        save_records([record(), {"model": "gpt"}], tmp_path / "r.json", machine={})
    with pytest.raises(TypeError, match=r"machine"):
        save_records([record()], tmp_path / "r.json")  # machine is required, by keyword
    assert not (tmp_path / "r.json").exists()


def test_load_records_names_the_fix_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path='.*none\.json' holds no bench results: "
                                                r"run `make bench` to measure them"):
        load_records(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="make bench"):
        load_records(tmp_path)  # a folder holds no results either


@pytest.mark.parametrize("payload", [{"a": 1}, {"records": [{"model": "gpt", "method": "x",
                                                             "value": 1.0}]}])
def test_load_records_refuses_other_files_with_the_path(tmp_path, payload):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"path='.*other\.json'.*make bench"):
        load_records(path)


def test_files_written_before_the_compiled_fields_still_load(tmp_path):
    old = {k: v for k, v in dataclasses.asdict(record()).items()
           if k not in ("compile_s", "compiled_float_latency_ms", "speedup_vs_compiled", "rounds")}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"created": "2026-11-28", "machine": {}, "records": [old]}))
    _, (loaded,) = load_records(path)
    assert loaded == record()
    assert (loaded.compile_s, loaded.compiled_float_latency_ms,
            loaded.speedup_vs_compiled) == (None, None, None)
    compiled = record(compile_s=31.5, compiled_float_latency_ms=15.0, speedup_vs_compiled=1.5)
    save_records([compiled], tmp_path / "new.json", machine={})
    assert load_records(tmp_path / "new.json")[1] == [compiled]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = write_json_atomic({"a": 1}, tmp_path / "out.json")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, like open(path, "w")
