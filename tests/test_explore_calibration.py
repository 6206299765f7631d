"""Tests for quantbook.explore_calibration against PyTorch's own prepare -> calibrate -> convert
flow, run once per setting."""

import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from quantbook import explore_calibration as ec
from quantbook import explore_static as es
from quantbook.methods import static
from quantbook.quiet import silence_known_noise
from quantbook.sweep import Sweep, Workload

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


@pytest.fixture(scope="module")
def ids():
    """Token ids the calibration batches never held."""
    return torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(5))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        silence_known_noise()
        yield


def stepwise(gpt, config, batches):
    """The reference: prepare_static -> calibrate -> convert_static."""
    return static.convert_static(static.calibrate(static.prepare_static(gpt, config), batches))


def test_linear_sets_keep_the_ffn_output_out_of_the_last_set(gpt):
    sets = ec.linear_sets(gpt)
    attention = [f"blocks.{i}.attn.{p}_proj" for i in range(2) for p in ("q", "k", "v", "out")]
    assert sets["attention"] == attention
    assert sorted(sets["attention + FFN"]) == sorted(
        attention + [f"blocks.{i}.mlp.fc_{s}" for i in range(2) for s in ("in", "out")])
    assert sorted(sets["attention + FFN input"]) == sorted(
        attention + ["blocks.0.mlp.fc_in", "blocks.1.mlp.fc_in"])


@pytest.mark.parametrize("observer", static.OBSERVERS)
def test_observe_then_convert_equals_prepare_calibrate_convert(gpt, batches, ids, observer):
    sets = ec.linear_sets(gpt)
    snapshots = ec.observe_linears(gpt, sets["attention + FFN"], batches, [observer], (1, 3))
    assert set(snapshots) == {(observer, 1), (observer, 3)}
    for (_, n), observed in snapshots.items():
        for names in (sets["attention"], sets["attention + FFN"]):
            config = static.StaticConfig(observer=observer, modules=tuple(names))
            ours, report = ec.convert_observed(gpt, observed, config)
            reference, _ = stepwise(gpt, config, batches[:n])
            with torch.no_grad():
                assert torch.equal(ours(ids)[0], reference(ids)[0])
            assert sorted(report.converted) == sorted(names)


def test_convert_observed_follows_the_configs_exclude(gpt, batches, ids):
    sets = ec.linear_sets(gpt)
    snapshots = ec.observe_linears(gpt, sets["attention + FFN"], batches, ["minmax"], (2,))
    config = static.StaticConfig(observer="minmax", exclude=("blocks.0.mlp.fc_out",))
    ours, report = ec.convert_observed(gpt, snapshots["minmax", 2], config)
    reference, _ = stepwise(gpt, config, batches[:2])
    assert "blocks.0.mlp.fc_out" not in report.converted
    assert type(ours.blocks[0].mlp.fc_out) is torch.nn.Linear
    with torch.no_grad():
        assert torch.equal(ours(ids)[0], reference(ids)[0])


def test_observe_linears_reports_progress_and_leaves_no_hooks(gpt, batches):
    calls = []
    ec.observe_linears(gpt, ["blocks.0.attn.q_proj"], batches, ["minmax"], (2,),
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]  # stops after the last checkpoint
    assert not gpt.blocks[0].attn.q_proj._forward_hooks


def test_observe_linears_and_convert_observed_errors(gpt, batches):
    with pytest.raises(ValueError, match=r"checkpoints=\[1, 5\] must lie in 1..3"):
        ec.observe_linears(gpt, ["blocks.0.attn.q_proj"], batches, checkpoints=(1, 5))
    with pytest.raises(ValueError, match=r"batches\[0\] holds token ids 0..99"):
        ec.observe_linears(gpt, ["blocks.0.attn.q_proj"], [torch.arange(100).view(1, 100)])
    snapshots = ec.observe_linears(gpt, ["blocks.0.attn.q_proj"], batches[:1], ["minmax"], (1,))
    observed = snapshots["minmax", 1]
    minmax = static.StaticConfig(observer="minmax", modules=("blocks.0.attn.q_proj",))
    with pytest.raises(ValueError, match=r"no observers for 'blocks.0.attn.k_proj'"):
        ec.convert_observed(gpt, observed, replace(
            minmax, modules=("blocks.0.attn.q_proj", "blocks.0.attn.k_proj")))
    with pytest.raises(ValueError, match=r"are MinMaxObserver, but config.observer='histogram'"):
        ec.convert_observed(gpt, observed, replace(minmax, observer="histogram"))


def test_convert_observed_refuses_observers_that_saw_no_data(gpt):
    fresh = {"blocks.0.attn.q_proj": (es.make_observer("minmax"), es.make_observer("minmax"))}
    config = static.StaticConfig(observer="minmax", modules=("blocks.0.attn.q_proj",))
    with pytest.raises(ValueError, match="2 observers have seen no data"):
        ec.convert_observed(gpt, fresh, config)


def test_quality_grid_measures_every_combination_through_the_sweep(gpt, batches, ids):
    sets = {k: v for k, v in ec.linear_sets(gpt).items() if k != "attention + FFN input"}
    snapshots = ec.observe_linears(gpt, sets["attention + FFN"], batches, ("minmax",), (1, 3))
    with torch.no_grad():
        reference = gpt(ids)[0]

    def evaluate(model):
        with torch.no_grad():
            out = model(ids)[0]
        cosine = F.cosine_similarity(out.flatten(1), reference.flatten(1))
        return {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean())}

    sweep = Sweep(Workload("tiny", gpt, metric="cosine_min", evaluate=evaluate))
    points, kept = ec.quality_grid(sweep, snapshots, sets, keep=[("minmax", 3, "attention")])
    assert [(p.observer, p.n_batches, p.linear_set) for p in points] == [
        ("minmax", n, s) for n in (1, 3) for s in sets]
    for point in points:
        config = static.StaticConfig(observer="minmax", modules=tuple(sets[point.linear_set]))
        expected, _ = stepwise(gpt, config, batches[: point.n_batches])
        assert point.record.secondary == {"cosine_mean": evaluate(expected)["cosine_mean"]}
        assert point.value == point.record.value == evaluate(expected)["cosine_min"]
        assert point.cosine_mean == point.record.quality("cosine_mean")
        assert point.record.converted == len(sets[point.linear_set])
        assert point.record.family == static.StaticConfig.family
        assert 0.9 < point.value <= point.cosine_mean <= 1.0 + 1e-6
    assert points[0].record.method == "static int8 (minmax, 1 batch, attention)"
    assert points[-1].record.method == "static int8 (minmax, 3 batches, attention + FFN)"
    assert list(kept) == [("minmax", 3, "attention")]
    expected, _ = stepwise(gpt, static.StaticConfig(observer="minmax",
                                                    modules=tuple(sets["attention"])), batches)
    with torch.no_grad():
        assert torch.equal(kept["minmax", 3, "attention"](ids)[0], expected(ids)[0])


def test_quality_grid_quotes_stored_qualities_after_checking_each_model(gpt, batches, ids,
                                                                        monkeypatch):
    from quantbook import stored_quality

    sets = {"attention": ec.linear_sets(gpt)["attention"]}
    snapshots = ec.observe_linears(gpt, sets["attention"], batches, ("minmax",), (1, 3))
    evaluated, checked = [], []

    def evaluate(model):
        evaluated.append(model)
        return {"cosine_min": 0.5, "cosine_mean": 0.6}

    def check(model, tokenizer, stored):
        checked.append((tokenizer, stored.method))
        return 1.0

    monkeypatch.setattr(stored_quality, "check", check)
    label = ec.grid_label("minmax", 3, "attention")
    assert label == "static int8 (minmax, 3 batches, attention)"
    stored = {label: stored_quality.StoredQuality(label, 0.25, 0.75, 0.7, ((1.0,),))}
    sweep = Sweep(Workload("tiny", gpt, metric="cosine_min", evaluate=evaluate))
    sweep.float_record()
    evaluated.clear()  # the float model's
    with pytest.raises(ValueError, match="without tokenizer="):
        ec.quality_grid(sweep, snapshots, sets, stored=stored)
    points, _ = ec.quality_grid(sweep, snapshots, sets, stored=stored, tokenizer="tok")
    assert checked == [("tok", label)]  # the stored model is checked, then quoted
    assert len(evaluated) == 1  # only the model with no stored quality is evaluated
    one, three = points
    assert (one.value, one.cosine_mean) == (0.5, 0.6)
    assert (three.value, three.cosine_mean, three.record.secondary["cosine_min"]) == (
        0.25, 0.75, 0.7)
    assert three.record.size_bytes > 0 and three.record.converted == len(sets["attention"])
