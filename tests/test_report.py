"""The report on real runs' metrics (issue 27 items 2 and 5): a failed sanity check is said in
the first lines, a ~20-line summary opens it, the per-bucket figure shows every bucket with
error bars, every figure has a title, tables name only what ran, timings run in pipeline order
with a total, the reference has its interval, and a run with nothing finished gets no
metrics.json.

Metrics files (real, copied read-only into a tmp run folder): tests/data/
metrics_movielens_quick_8108a95.json (runs/movielens-quick at 8108a95: its RQ-VAE collapsed and
stopped the run after the encoder, whose aligned Hit@30 is under the off-the-shelf towers'),
tests/data/metrics_synthetic_590bc70.json (runs/synthetic at 590bc70: base under the reference,
aligned under off-the-shelf, no SimTier), benchmarks/results/movielens_metrics.json (the full
MovieLens grid: every check passes). Expected outcomes are worked out here from the JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib.figure
import pytest
from report_checks import expected_failures

from saviorrec.config import REPO_ROOT, Config, load_config
from saviorrec.lake import Lake
from saviorrec.report import write_report
from saviorrec.stages import STAGE_NAMES

DATA = Path(__file__).parent / "data"
QUICK = DATA / "metrics_movielens_quick_8108a95.json"
SYNTHETIC = DATA / "metrics_synthetic_590bc70.json"
MOVIELENS = REPO_ROOT / "benchmarks" / "results" / "movielens_metrics.json"


def run_on(metrics: Path | dict[str, Any], tmp_path: Path, config: str = "movielens.yaml") -> Config:
    """A run folder in tmp_path holding a copy of ``metrics``; its report written."""
    cfg = load_config(REPO_ROOT / "configs" / config)
    cfg = cfg.with_overrides(run={"root": str(tmp_path / "run"), "name": "report-test"})
    lake = Lake.from_config(cfg)
    lake.metrics.parent.mkdir(parents=True)
    if isinstance(metrics, Path):
        shutil.copyfile(metrics, lake.metrics)
    else:
        lake.metrics.write_text(json.dumps(metrics))
    write_report(cfg)
    return cfg


def report_of(cfg: Config) -> str:
    return (Lake.from_config(cfg).report_dir / "report.md").read_text()


METRICS = [pytest.param(QUICK, 1, id="movielens-quick"), pytest.param(SYNTHETIC, 2, id="synthetic"),
           pytest.param(MOVIELENS, 0, id="movielens")]


@pytest.mark.parametrize(("metrics", "failures"), METRICS)
def test_a_failed_check_is_said_in_the_first_lines(metrics: Path, failures: int,
                                                   tmp_path: Path) -> None:
    expected = expected_failures(json.loads(metrics.read_text()))
    assert len(expected) == failures  # the data are what this test says they are
    lines = report_of(run_on(metrics, tmp_path, "synthetic.yaml" if metrics == SYNTHETIC
                             else "movielens.yaml")).splitlines()
    if not expected:
        assert lines[2].startswith("**Sanity checks: all 5 measured passed")
        assert "FAILED" not in "\n".join(lines) and "UNDER" not in "\n".join(lines)
        return
    assert lines[2] == f"**Sanity checks: {failures} of {len(lines[3:lines.index('', 3)])} FAILED.**"
    first = lines[3:3 + failures]
    for figure in expected:
        assert any(line.startswith("- FAILED: ") and figure in line and "UNDER" in line
                   for line in first), (figure, first)


def test_a_collapse_is_said_in_the_first_lines(tmp_path: Path) -> None:
    """The full MovieLens metrics with the collapse the quick run had before issue 27 (issue
    text: 1.6-12.5% of the codes per level, 0.28% unique ids)."""
    m = json.loads(MOVIELENS.read_text())
    m["rqvae"]["sinkhorn"].update(utilization_per_level=[1 / 64, 2 / 64, 4 / 64, 8 / 64],
                                  unique_ratio=0.0028)
    lines = report_of(run_on(m, tmp_path)).splitlines()
    assert lines[2] == "**Sanity checks: 1 of 5 FAILED.**"
    assert lines[3].startswith("- FAILED: semantic ids (sinkhorn) COLLAPSED: level 1 uses 1.6% "
                               "of its 64 codes (floor 50.0%)")
    assert "0.28% unique ids" in lines[3]


def test_the_summary_holds_headline_auc_intervals_and_files(tmp_path: Path) -> None:
    m = json.loads(MOVIELENS.read_text())
    cfg = run_on(MOVIELENS, tmp_path)
    text = report_of(cfg)
    summary = text.split("\nGenerated ")[0]
    assert len(summary.splitlines()) <= 22
    full, ref = m["ranker"]["full"]["auc"], m["reference"]["smoothed_mean"]
    assert (f"SaviorRec (full) {100 * full['mean']:.2f} [{100 * full['ci95'][0]:.2f}, "
            f"{100 * full['ci95'][1]:.2f}]") in summary
    ref_text = f"{100 * ref['auc']:.2f} [{100 * ref['ci95'][0]:.2f}, {100 * ref['ci95'][1]:.2f}]"
    assert f"non-neural reference {ref_text}" in summary
    assert f"Non-neural reference (smoothed user mean + item mean, logit sum): {ref_text}." in text
    assert str(Lake.from_config(cfg).metrics) in summary
    gap = m["ranker"]["full_minus"]["base"]
    assert f"full - base {100 * gap['diff']:+.2f}" in summary


def test_timings_in_pipeline_order_with_a_total(tmp_path: Path) -> None:
    timings = json.loads(MOVIELENS.read_text())["timings"]
    assert list(timings) == sorted(timings)  # stored alphabetically
    table = report_of(run_on(MOVIELENS, tmp_path)).split("## Stage timings")[1]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ")][1:]
    stages = [name.strip() for name, _ in rows]
    assert stages == [s for s in STAGE_NAMES if f"{s}_s" in timings] + ["**total**"]
    assert rows[-1][1].strip() == f"**{sum(timings.values()):.1f}**"


def test_tables_name_only_what_ran(tmp_path: Path) -> None:
    synthetic = report_of(run_on(SYNTHETIC, tmp_path / "s", "synthetic.yaml"))
    assert "## Table 2: AUC of Base and SaviorRec per PV bucket\n" in synthetic
    assert "SimTier" not in synthetic  # not run there
    table4 = synthetic.split("## Table 4")[1].split("###")[0]
    assert "text_only" not in table4 and "off_the_shelf" in table4  # the ablations did not run
    movielens = report_of(run_on(MOVIELENS, tmp_path / "m"))
    assert "## Table 2: AUC of Base, SimTier and SaviorRec per PV bucket\n" in movielens
    assert "text_only" in movielens.split("## Table 4")[1]


def test_figures_have_titles_and_the_bucket_figure_every_bucket_with_error_bars(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: dict[str, dict[str, Any]] = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig: matplotlib.figure.Figure, path: Any, **kw: Any) -> None:
        ax = fig.axes[0]
        drawn[Path(path).name] = {
            "titles": [a.get_title() for a in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""],
            "ticks": [t.get_text() for t in ax.get_xticklabels()],
            "error_bars": sum(getattr(c, "has_yerr", False) for c in ax.containers)}
        save(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    cfg = run_on(MOVIELENS, tmp_path / "all")
    assert set(drawn) >= {"auc_by_bucket.png", "mba_level_importance.png", "feature_drop.png"}
    for name, fig in drawn.items():
        assert any(t.strip() for t in fig["titles"]), name
    buckets = cfg.stats.bucket_labels()
    assert drawn["auc_by_bucket.png"]["ticks"] == buckets  # >100 included
    assert drawn["auc_by_bucket.png"]["error_bars"] == 3  # base, SimTier, full
    m = json.loads(MOVIELENS.read_text())
    for v in ("base", "simtier", "full"):  # a bucket without an AUC stays on the axis, marked
        m["ranker"][v]["auc_by_bucket"].pop(">100")
    run_on(m, tmp_path / "without")
    assert drawn["auc_by_bucket.png"]["ticks"] == [*buckets[:-1], ">100\n(no AUC)"]


def test_a_run_with_nothing_finished_gets_no_metrics_json(tmp_path: Path) -> None:
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(tmp_path / "run")})
    write_report(cfg)
    lake = Lake.from_config(cfg)
    assert not lake.metrics.exists()
    lines = report_of(cfg).splitlines()
    assert lines[2] == "**Sanity checks: none measured yet (their stages did not finish).**"
    assert all(line.startswith("- not measured: ") for line in lines[3:6])
