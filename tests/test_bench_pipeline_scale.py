"""benchmarks/pipeline_scale.py's pure parts: the size labels, growth_10x and workers_speedup,
and the results file keeping the keys other benchmarks wrote (no pipeline is run here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from conftest import load_benchmark

ps = load_benchmark("pipeline_scale")
common = load_benchmark("_bench_common")


def test_sizes_parse_to_their_labels_and_others_are_refused() -> None:
    assert ps.size_label("10M") == ("10M", 10_000_000)
    assert ps.size_label("100M") == ("100M", 100_000_000)
    assert ps.size_label("200k") == ("200k", 200_000)
    assert ps.size_label("1000000") == ("1M", 1_000_000)
    for bad in ("3M", "10m", "ten", "0.5k", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            ps.size_label(bad)
    assert common.count_label(1_500) == "1500" and common.parse_count("1.5k") == 1_500


def _entry(events: int, seconds: dict[str, float], workers: int = 1) -> dict:
    return {"events": events, "workers": workers, "stages_s": seconds,
            "stages": {s: {"seconds": t, "rows": events // 10, "peak_rss_mb": 100.0}
                       for s, t in seconds.items()}}


def test_growth_is_per_stage_between_the_largest_pair_ten_times_apart() -> None:
    sizes = {"1M": _entry(10**6, {"spark": 5.0}),
             "10M": _entry(10**7, {"spark": 20.0, "train": 4.0}),
             "100M": _entry(10**8, {"spark": 300.0, "train": 5.0}),
             "10M_workers2": _entry(10**7, {"spark": 1.0}, workers=2)}  # not a size label alone
    growth = ps.growth_10x(sizes)
    assert (growth["from"], growth["to"]) == ("10M", "100M")
    assert growth["seconds"] == {"spark": 15.0, "train": 1.25}
    assert growth["rows"] == {"spark": 10.0, "train": 10.0}
    assert growth["every_stage_le_12x"] is False
    assert ps.growth_10x({"10M": sizes["10M"]}) is None


def test_workers_speedup_compares_the_same_size() -> None:
    sizes = {"10M": _entry(10**7, {"spark": 20.0, "train": 4.0}),
             "10M_workers2": _entry(10**7, {"spark": 12.5, "train": 4.0}, workers=2),
             "100M": _entry(10**8, {"spark": 300.0})}
    speedup = ps.workers_speedup(sizes)
    assert list(speedup) == ["10M"]
    assert speedup["10M"]["10M_workers2"] == {"against": "10M", "workers": [1, 2],
                                              "stages": {"spark": 1.6, "train": 1.0}}


def test_the_results_file_keeps_every_other_key(tmp_path: Path) -> None:
    out = tmp_path / "pipeline_scale.json"
    out.write_text(json.dumps({"serving_1M": {"p99_ms_cold": 49.2},
                               "sizes": {"10M": _entry(10**7, {"spark": 20.0})}}))
    common.update_json_atomic(out, lambda data: ps.merged(data, "100M",
                                                          _entry(10**8, {"spark": 200.0})))
    data = json.loads(out.read_text())
    assert data["serving_1M"] == {"p99_ms_cold": 49.2}
    assert sorted(data["sizes"]) == ["100M", "10M"]
    assert data["growth_10x"] == {"spark": 10.0}
    common.update_key_atomic(out, "serving_1M", {"p99_ms_cold": 50.0})  # serving.py's write
    again = json.loads(out.read_text())
    assert again["sizes"] == data["sizes"] and again["serving_1M"] == {"p99_ms_cold": 50.0}


def test_synthetic_cold_reads_each_bucket_of_the_metrics() -> None:
    """Issue 25 item 3's table from a report's metrics.json (single seed: the floats and
    {"mean"} forms both), and only a plain-size run sets the top-level key."""
    bucket = {"0": {"ci95": [0.01, 0.09], "diff": 0.05}, "1-5": {"ci95": [-0.02, 0.03], "diff": 0.004}}
    metrics = {
        "ranker": {"base": {"auc": 0.70, "auc_by_bucket": {"0": {"mean": 0.55}, "1-5": 0.68}},
                   "full": {"auc": {"mean": 0.72}, "auc_by_bucket": {"0": 0.60, "1-5": 0.684}},
                   "full_minus": {"base": {"by_bucket": bucket}}},
        "reference": {"smoothed_mean": {"auc": 0.69, "auc_by_bucket": {"0": 0.57, "1-5": 0.66}},
                      "oracle": {"auc": 0.88, "auc_by_bucket": {"0": 0.87, "1-5": 0.86}}},
    }
    cold = ps.synthetic_cold(metrics)
    assert cold["overall"] == {"reference": 0.69, "base": 0.70, "full": 0.72, "oracle": 0.88}
    assert cold["by_bucket"]["0"] == {"reference": 0.57, "base": 0.55, "full": 0.60, "oracle": 0.87,
                                      "full_minus_base": 0.05, "full_minus_base_ci95": [0.01, 0.09],
                                      "interval_above_0": True}
    assert cold["by_bucket"]["1-5"]["interval_above_0"] is False
    entry = {**_entry(10_000_000, {"spark": 1.0}), "synthetic_cold": cold}
    assert ps.merged({}, "10M", entry)["synthetic_cold"]["size"] == "10M"
    assert "synthetic_cold" not in ps.merged({}, "10M_workers1", entry)


def test_a_resumed_run_keeps_the_stages_of_its_first_part(tmp_path: Path) -> None:
    path = tmp_path / "scale.json"
    first = {**_entry(10_000_000, {"prepare": 50.0, "spark": 100.0, "features": 3.0}),
             "date_utc": "then", "failed": {"stage": "features"}}
    path.write_text(json.dumps({"sizes": {"10M": first}}))
    resumed = ps.resumed_stages(path, "10M", {"features": {"seconds": 40.0}})
    assert sorted(resumed["stages"]) == ["prepare", "spark"]  # features is re-run, not kept
    assert resumed["note"]["earlier_part_failed"] == {"stage": "features"}
    assert ps.resumed_stages(path, "100M", {}) is None
    assert ps.resumed_stages(tmp_path / "none.json", "10M", {}) is None
