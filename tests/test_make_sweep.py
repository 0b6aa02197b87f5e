"""tools/make_sweep.py: one config per value over a shared training set, trained for real,
and the summary's choice by validation AUC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import load_benchmark
from test_ranker_fixtures import training_world

from saviorrec.config import load_config
from tf_ranker.train import run_train


@pytest.mark.timeout(600)
def test_sweep_configs_share_the_training_set_and_the_summary_picks_by_validation(
        tmp_path: Path) -> None:
    sweep = load_benchmark("make_sweep", "tools")
    base_cfg = training_world(tmp_path / "base", epochs=1, batch_size=64, heads=2,
                              attention_dim=8, mba_dim=8, id_dim=4, stat_dim=4, dnn_units=[8])
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(base_cfg.model_dump(mode="json")))
    values = [0.01, 0.2]
    paths = sweep.write_configs(base, "ranker.lr", values, tmp_path / "sweep")
    assert [p.name for p in paths] == ["lr-0.01.yaml", "lr-0.2.yaml"]
    metas = {}
    for path, value in zip(paths, values, strict=True):
        cfg = load_config(path)
        assert cfg.ranker.lr == value and cfg.run_dir() == (tmp_path / "sweep" / path.stem)
        assert cfg.ranker.model_dump(exclude={"lr"}) == base_cfg.ranker.model_dump(exclude={"lr"})
        for shared in ("lake/training", "models/rqvae"):
            link = cfg.run_dir() / shared
            assert link.is_symlink() and link.resolve() == (base_cfg.run_dir() / shared).resolve()
        metas[value] = run_train(cfg, variant="base", seed=0)
    assert not (base_cfg.run_dir() / "models" / "ranker").exists()  # each run writes its own

    summary = sweep.summarize(paths, "ranker.lr", values)
    for value in values:
        run = summary["runs"][str(value)]
        assert run["mean_val_auc"] == pytest.approx(metas[value]["val_auc"], abs=1e-5)
        assert [t["variant"] for t in run["trained"]] == ["base"]
        assert "test_full_minus_points" not in run  # `saviorrec evaluate` did not run
    assert "val_auc_points_vs_first" not in summary["runs"]["0.01"]
    later = summary["runs"]["0.2"]
    gain = 100 * (metas[0.2]["val_auc"] - metas[0.01]["val_auc"])
    assert later["val_auc_points_vs_first"] == {"base/seed0": pytest.approx(gain, abs=1e-3)}
    assert later["ahead_of_first_in_every_run"] is (gain > 0)
    assert later["gain_vs_first"] == {"n": 1, "mean": pytest.approx(gain, abs=1e-3), "se": None,
                                      "t": None}
    assert metas[0.01]["val_auc"] != metas[0.2]["val_auc"]  # the runs differ
    # one run has no known error: it cannot show a gain, so the incumbent (the first) stays
    assert summary["chosen"] == "0.01"
    json.dumps(summary)  # JSON-serialisable as written by --summarize

    # a failed run (no meta.json, e.g. a collapsed training) takes its value out of the choice;
    # a failed incumbent leaves the choice to the others
    failed = load_config(paths[0]).run_dir() / "models" / "ranker" / "base"
    (failed / "seed0" / "meta.json").rename(tmp_path / "meta.json")
    summary = sweep.summarize(paths, "ranker.lr", values)
    assert summary["runs"]["0.01"]["missing_runs"] == ["base/seed0"]
    assert summary["chosen"] == "0.2"

    with pytest.raises(SystemExit, match="section.field"):
        sweep.write_configs(base, "lr", [0.1], tmp_path / "bad")
    base_cfg.run_dir().joinpath("models", "rqvae").rename(tmp_path / "moved")
    with pytest.raises(SystemExit, match="models/rqvae missing"):
        sweep.write_configs(base, "ranker.lr", [0.3], tmp_path / "bad")


def _runs(*vals_by_value: list[float]) -> dict[str, dict]:
    """summarize()'s runs from validation AUCs per value (runs base/seed0, base/seed1, ...)."""
    runs = {}
    for i, vals in enumerate(vals_by_value):
        runs[f"v{i}"] = {"mean_val_auc": sum(vals) / len(vals), "trained": [
            {"variant": "base", "seed": s, "val_auc": v} for s, v in enumerate(vals)]}
    return runs


def test_choice_needs_a_paired_gain_beyond_two_standard_errors() -> None:
    sweep = load_benchmark("make_sweep", "tools")
    # v1: +0.20, +0.30, +0.10 points: mean 0.2, sd 0.1, se 0.0577, t 3.46 -> beats the incumbent.
    # v2: higher mean (+0.30) but +1.0, -0.1, 0.0: se 0.351, t 0.85 -> noise, not chosen.
    runs = _runs([0.780, 0.781, 0.779], [0.782, 0.784, 0.780], [0.790, 0.780, 0.779])
    sweep._compare_with_first(runs)
    assert runs["v1"]["gain_vs_first"] == {"n": 3, "mean": pytest.approx(0.2, abs=1e-4),
                                           "se": pytest.approx(0.0577, abs=1e-4),
                                           "t": pytest.approx(3.46, abs=0.01)}
    assert runs["v2"]["gain_vs_first"]["t"] == pytest.approx(0.3 / 0.3512, abs=0.01)
    assert runs["v2"]["mean_val_auc"] > runs["v1"]["mean_val_auc"]
    assert sweep.choose(runs) == "v1"
    # without v1 nothing beats the incumbent; a run missing takes v1 out as well
    assert sweep.choose({k: runs[k] for k in ("v0", "v2")}) == "v0"
    runs["v1"]["missing_runs"] = ["base/seed2"]
    assert sweep.choose(runs) == "v0"
    assert sweep.choose({}) is None


def test_upstream_key_builds_its_own_lake_and_reports_its_encoder(tmp_path: Path) -> None:
    sweep = load_benchmark("make_sweep", "tools")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"run": {"name": "b", "root": str(tmp_path / "base")}}))
    with pytest.raises(SystemExit, match="lake/cache missing"):
        sweep.write_configs(base, "coclick.min_support", [2, 1], tmp_path / "sweep")
    (tmp_path / "base" / "lake" / "cache").mkdir(parents=True)
    fixed = {"encoder.ablations": False}
    paths = sweep.write_configs(base, "coclick.min_support", [2, 1], tmp_path / "sweep", fixed)
    for path, value in zip(paths, [2, 1], strict=True):
        cfg = load_config(path)
        assert cfg.coclick.min_support == value and cfg.encoder.ablations is False
        run_dir = cfg.run_dir()
        assert (run_dir / "lake" / "cache").resolve() == (tmp_path / "base" / "lake" / "cache")
        assert not (run_dir / "lake" / "training").exists()  # built per value, never shared
    with pytest.raises(SystemExit, match="swept key"):
        sweep.write_configs(base, "coclick.min_support", [3], tmp_path / "bad",
                            {"coclick.min_support": 1})

    # the summary carries each value's encoder figures from its own lake
    for path, hit in zip(paths, [0.03, 0.04], strict=True):
        metrics = load_config(path).run_dir() / "report" / "metrics.json"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"encoder": {"hit_at_30": hit / 2, "hit_at_30_valid": hit,
                                                   "run": {"coclick_pairs": 100}}}))
    # and, where `saviorrec evaluate` ran, its paired test gaps of full over the others, in points
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "ranker": {"full_minus": {
        "no_bidir": {"diff": -0.00123, "ci95": [-0.0025, 0.0001], "seeds": {"0": -0.00123}}}}}))
    summary = sweep.summarize(paths, "coclick.min_support", [2, 1])
    assert summary["runs"]["1"]["test_full_minus_points"] == {
        "no_bidir": {"diff": -0.12, "ci95": [-0.25, 0.01]}}
    assert "test_full_minus_points" not in summary["runs"]["2"]
    assert summary["runs"]["1"]["encoder"] == {"hit_at_30_valid": 0.04, "hit_at_30_test": 0.02,
                                               "coclick_pairs": 100}
    assert summary["runs"]["2"]["encoder"]["hit_at_30_valid"] == 0.03
    assert summary["chosen"] is None  # nothing trained yet


def test_a_run_shares_the_base_training_set_exactly_when_its_config_leaves_it_unchanged(
        tmp_path: Path) -> None:
    sweep = load_benchmark("make_sweep", "tools")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"run": {"name": "b", "root": str(tmp_path / "base")}}))
    for shared in ("lake/cache", "lake/training", "models/rqvae"):
        (tmp_path / "base" / shared).mkdir(parents=True)
    # min_support 2 is the base run's own value; encoder.ablations does not change the lake
    paths = sweep.write_configs(base, "coclick.min_support", [2, 1], tmp_path / "up",
                                {"encoder.ablations": False})
    incumbent, other = (load_config(p).run_dir() for p in paths)
    for shared in ("lake/training", "models/rqvae"):
        assert (incumbent / shared).resolve() == tmp_path / "base" / shared
        assert not (other / shared).exists()
    assert (other / "lake" / "cache").resolve() == tmp_path / "base" / "lake" / "cache"
    assert [sweep.needs_lake(p) for p in paths] == [False, True]
    # a ranker sweep with an upstream key fixed cannot train on the base run's training set
    (path,) = sweep.write_configs(base, "ranker.lr", [0.01], tmp_path / "down",
                                  {"coclick.min_support": 1})
    assert sweep.needs_lake(path)
    assert (load_config(path).run_dir() / "lake" / "cache").exists()
    (path,) = sweep.write_configs(base, "ranker.lr", [0.01], tmp_path / "plain")
    assert not sweep.needs_lake(path)
