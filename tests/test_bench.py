import dataclasses

import pytest
import torch

from quantbook import bench
from quantbook.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def workload():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=64)).eval()
    ids = torch.randint(0, 32, (4, 16))
    # contiguous: eager quantized embeddings refuse strided index tensors
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def loss(m):
        with torch.no_grad():
            return float(m(inputs, targets)[1])

    return bench.Workload(name="gpt", model=model, metric="loss", evaluate=loss,
                          run=lambda m: m(ids), calibration=[ids[:2], ids[2:]],
                          linear_targets=("attention", "ffn", "head"))


def test_run_workload_records(workload):
    only = ["weight-only int4", "dynamic int8 per-tensor", "static int8 (min-max)",
            "torchao int8 dynamic"]
    records = bench.run_workload(workload, only=only, warmup=1, repeats=2)
    assert [r["method"] for r in records] == ["float32", *only]
    base, int4, dyn, stat, ao = records
    assert base["size_ratio"] == 1.0 and base["latency_ms"] > 0
    # 4-bit packed codes with one float32 scale per row of 64 inputs: 4/32 + 32/(64*32)
    assert int4["quantized_bytes_ratio"] < 0.20
    assert dyn["quantized_bytes_ratio"] < 0.40  # int8 codes plus packing overhead
    assert int4["size_bytes"] < dyn["size_bytes"] < base["size_bytes"]
    for r in (int4, dyn, stat, ao):
        assert r["converted"] == 7  # q, k, v, out, fc_in, fc_out, lm_head
        assert r["speedup"] > 0 and r["threads"] >= 1
        assert abs(r["value"] - base["value"]) < 0.5  # still the same model, roughly
    keys = {"model", "method", "size_bytes", "size_ratio", "latency_ms", "speedup", "metric",
            "value", "threads", "cpu"}
    assert keys <= set(dyn)


def test_unknown_method_and_model(workload):
    with pytest.raises(ValueError, match=r"only=\['nope'\] names no method"):
        bench.run_workload(workload, only=["nope"])
    with pytest.raises(ValueError, match="models=\\['bert'\\] is not supported"):
        bench.run_bench(["bert"])


def test_format_table(workload):
    records = bench.run_workload(workload, only=["dynamic float16"], warmup=1, repeats=1)
    table = bench.format_table(records)
    assert "float32" in table and "dynamic float16" in table
    assert len(table.splitlines()) == 4


def test_every_method_runs_and_converts_every_target(workload):
    records = bench.run_workload(workload, warmup=0, repeats=1)
    assert [r["method"] for r in records[1:]] == list(bench.methods(workload))
    for r in records[1:]:
        # 7 Linears; the variants that quantize embeddings add tok_emb and pos_emb
        with_embeddings = "embeddings" in r["method"]
        assert r["converted"] == (9 if with_embeddings else 7), r["method"]


def test_untimed_run_reproduces_sizes_and_quality_of_a_timed_one(workload):
    only = ["weight-only int4", "dynamic int8 per-tensor"]
    timed = bench.run_workload(workload, only=only, warmup=0, repeats=1)
    untimed = bench.run_workload(workload, only=only, timed=False)
    for a, b in zip(timed, untimed, strict=True):
        assert (a["size_bytes"], a["value"]) == (b["size_bytes"], b["value"])
        assert b["latency_ms"] is None
    assert untimed[1]["speedup"] is None and untimed[0]["speedup"] == 1.0


def test_results_round_trip_with_the_machine(workload, tmp_path):
    records = bench.run_workload(workload, only=["dynamic float16"], timed=False)
    path = bench.save_results(records, tmp_path / "r.json", repeats=3, seconds=1)
    meta, loaded = bench.load_results(path)
    assert loaded == records
    assert meta["repeats"] == 3 and meta["machine"]["torch_version"] == torch.__version__


def test_secondary_quality_figures_are_recorded(workload):
    def quality(m):
        return {"loss": workload.evaluate(m), "loss_x2": 2 * workload.evaluate(m)}

    with_dict = dataclasses.replace(workload, evaluate=quality)
    base, dyn = bench.run_workload(with_dict, only=["dynamic int8 per-tensor"], timed=False)
    assert dyn["secondary"] == {"loss_x2": pytest.approx(2 * dyn["value"])}
    assert base["secondary"]["loss_x2"] == pytest.approx(2 * base["value"])
    assert "loss_x2 " in bench.format_table([base, dyn])
    missing = dataclasses.replace(workload, evaluate=lambda m: {"other": 1.0})
    with pytest.raises(KeyError, match="without metric='loss'"):
        bench.run_workload(missing, only=["dynamic float16"], timed=False)


def test_describe_reads_the_shapes_of_the_batches(workload):
    timed = dataclasses.replace(workload, timed_inputs=[torch.zeros(4, 16)])
    assert timed.describe() == ("timed call: 1 batch of token ids, 4x16; "
                                "calibration: 2 batches of token ids, 2x16 and 2x16")
    assert bench._shapes([{"input_ids": torch.zeros(3, 7)}] * 3) == (
        "3 batches of token ids, 3x7, 3x7 and 3x7")
