"""``saviorrec report``: report/ of a run (report.md, PNG figures, metrics.json).

report.md opens with a summary of about 20 lines: the sanity checks (:func:`sanity_checks`: each
ranker above the non-neural reference, the aligned encoder above the off-the-shelf towers on
Hit@K, semantic ids not collapsed), a failed one first and in words, then the headline AUCs with
their intervals and where the run's files are. Below it, the paper's tables and figures from
what the stages wrote into metrics.json and the lake; a table names only what ran, and one whose
inputs a run did not produce (e.g. Table 5 without --full-grid) says so instead of showing
numbers. Nothing here trains or evaluates anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from saviorrec.config import Config
from saviorrec.lake import Lake, atomic_path, read_table
from saviorrec.metrics import read_metrics, update_metrics
from saviorrec.schema import EMBEDDINGS, OFF_THE_SHELF, SPLITS, TEST
from saviorrec.stages import STAGE_NAMES

log = logging.getLogger("saviorrec.report")

PAPER_TABLE2 = {"base": 71.28, "simtier": 71.36, "full": 72.11}
PAPER_TABLE3 = {"base": 71.28, "no_mba": 72.00, "no_raw_mm": 71.80, "no_bidir": 71.98, "full": 72.11}
PAPER_TABLE4 = {"off_the_shelf": 28.56, "aligned": 41.30}
PAPER_TABLE5 = {64: 72.11, 32: 72.07, 16: 72.08, 8: 72.03}
VARIANT_NAMES = {
    "base": "Base (TA over id + statistics)",
    "simtier": "SimTier",
    "no_mba": "w/o MBA",
    "no_raw_mm": "w/o multimodal embedding",
    "no_bidir": "w/o Bi-Dirc Attn",
    "full": "SaviorRec (full)",
}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _ci(ci: Sequence[float] | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def _get(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _auc(node: dict[str, Any] | None, key: str = "mean") -> str:
    """``auc %`` with its interval, from a node holding ``key`` and ``ci95``."""
    return "n/a" if not node or node.get(key) is None else _pct(node[key]) + _ci(node.get("ci95"))


# --- sanity checks ------------------------------------------------------------------------------
TABLE2 = ("base", "simtier", "full")  # the headline models: each must beat the reference
SHORT_NAMES = {"base": "Base", "simtier": "SimTier", "full": "SaviorRec"}


@dataclass(frozen=True)
class Check:
    """One sanity check of a run. ``ok``: True passed, False failed, None not measured (the stage
    that measures it did not finish); ``text`` says what was compared, with the figures."""

    name: str
    ok: bool | None
    text: str


def check_rankers(metrics: dict[str, Any]) -> list[Check]:
    """Each Table 2 model that ran must score a higher test AUC than the non-neural reference
    (smoothed user + item click rates): a ranker under it has learnt less than two counts."""
    ref = _get(metrics, "reference.smoothed_mean")
    checks = []
    for v in TABLE2:
        auc = _get(metrics, f"ranker.{v}.auc")
        if not auc or auc.get("mean") is None:
            continue
        name = f"{v} above the reference"
        if not ref or ref.get("auc") is None:
            checks.append(Check(name, None, f"{VARIANT_NAMES[v]}: no reference AUC to compare with"))
            continue
        ok = auc["mean"] > ref["auc"]
        checks.append(Check(name, ok, f"{VARIANT_NAMES[v]}: test AUC {_auc(auc)} is "
                            f"{'above' if ok else 'UNDER'} the non-neural reference's "
                            f"{_auc(ref, 'auc')}"))
    return checks or [Check("rankers above the reference", None,
                             "rankers: none evaluated (the evaluate stage did not finish)")]


def check_encoder(metrics: dict[str, Any], k: int) -> Check:
    """The co-click aligned encoder must retrieve next clicks better than the off-the-shelf
    towers it starts from (Hit@K on test; the paper's Table 4: 1.45x)."""
    hits = _get(metrics, f"encoder.hit_at_{k}") or {}
    aligned, base = hits.get("aligned"), hits.get("off_the_shelf")
    name = f"aligned encoder above off-the-shelf on Hit@{k}"
    if aligned is None or base is None:
        return Check(name, None, f"encoder Hit@{k}: the encode stage did not finish")
    ok = aligned > base
    ratio = f"{aligned / base:.2f}x" if base else "n/a"
    return Check(name, ok, f"aligned encoder: Hit@{k} {_pct(aligned)}% is "
                 f"{'above' if ok else 'UNDER'} the off-the-shelf towers' {_pct(base)}% "
                 f"({ratio}; paper 1.45x)")


def check_semantic_ids(cfg: Config, metrics: dict[str, Any]) -> Check:
    """The ids of the configured assignment against the floors the RQ stage stops a run under
    (rqvae.min_utilization of the codes a level's items can use, rqvae.min_unique_ratio of the
    unique ratio the ids allow; encoder_torch/semantic_ids.py, check_not_collapsed), from the
    figures the stage wrote: a run written before that check, or copied, is judged the same."""
    rc, assignment = cfg.rqvae, cfg.rqvae.assignment
    m = _get(metrics, f"rqvae.{assignment}")
    name = "semantic ids not collapsed"
    if not m or not m.get("utilization_per_level") or m.get("unique_ratio") is None:
        return Check(name, None, "semantic ids: the rqvae stage did not finish (a collapse stops "
                     "it with the figures in the log)")
    run = _get(metrics, "rqvae.run") or {}
    size = m.get("codebook_size") or run.get("codebook_size") or rc.codebook_size
    util, unique = m["utilization_per_level"], m["unique_ratio"]
    items = run.get("items")
    usable = min(1.0, items / size) if items else 1.0
    most = min(1.0, size ** len(util) / items) if items else 1.0
    if items and run.get("distinct_embeddings"):
        most = min(most, run["distinct_embeddings"] / items)
    problems = [f"level {i} uses {100 * u:.1f}% of its {size} codes (floor "
                f"{100 * rc.min_utilization * usable:.1f}%)"
                for i, u in enumerate(util, start=1) if u < rc.min_utilization * usable]
    if unique < rc.min_unique_ratio * most:
        problems.append(f"{100 * unique:.2f}% unique ids (floor {100 * rc.min_unique_ratio * most:.2f}%)")
    per_level = ", ".join(f"{100 * u:.1f}" for u in util)
    figures = f"{_pct(unique)}% unique, codes used per level [{per_level}]%"
    if problems:
        return Check(name, False, f"semantic ids ({assignment}) COLLAPSED: {'; '.join(problems)}; "
                     f"{figures}")
    return Check(name, True, f"semantic ids ({assignment}): {figures}")


def sanity_checks(cfg: Config, metrics: dict[str, Any]) -> list[Check]:
    """Every check of a run, failed ones first (a reader sees them in the report's first lines)."""
    checks = [*check_rankers(metrics), check_encoder(metrics, cfg.encoder.hit_k),
              check_semantic_ids(cfg, metrics)]
    order = {False: 0, None: 1, True: 2}
    return sorted(checks, key=lambda c: order[c.ok])


def checks_markdown(checks: list[Check]) -> str:
    failed = sum(c.ok is False for c in checks)
    unmeasured = sum(c.ok is None for c in checks)
    if failed:
        head = f"**Sanity checks: {failed} of {len(checks)} FAILED.**"
    elif unmeasured == len(checks):
        head = "**Sanity checks: none measured yet (their stages did not finish).**"
    else:
        head = (f"**Sanity checks: all {len(checks) - unmeasured} measured passed"
                + (f", {unmeasured} not measured.**" if unmeasured else ".**"))
    mark = {False: "FAILED", None: "not measured", True: "ok"}
    return "\n".join([head, *(f"- {mark[c.ok]}: {c.text}." for c in checks)])


# --- data summary (Table 1) ---------------------------------------------------------------------
def data_summary(cfg: Config, lake: Lake) -> dict[str, Any]:
    """Share of test samples, clicks and items per PV bucket, and overall counts."""
    labels = cfg.stats.bucket_labels()
    out: dict[str, Any] = {"buckets": {}}
    test_path = lake.training(TEST)
    if not test_path.exists():
        return out
    test = pq.read_table(test_path, columns=["item_id", "label", "eval_pv_bucket"])
    bucket = test["eval_pv_bucket"].to_numpy()
    label = test["label"].to_numpy()
    item = test["item_id"].to_numpy()
    n, clicks, items = len(bucket), max(int(label.sum()), 1), max(len(np.unique(item)), 1)
    for i, name in enumerate(labels):
        m = bucket == i
        out["buckets"][name] = {
            "samples_pct": 100 * m.sum() / max(n, 1),
            "clicks_pct": 100 * label[m].sum() / clicks,
            "items_pct": 100 * len(np.unique(item[m])) / items,
            "ctr": float(label[m].mean()) if m.any() else None,
        }
    for split in SPLITS:
        path = lake.training(split)
        if path.exists():
            t = pq.read_table(path, columns=["label"])
            out[f"{split}_samples"] = t.num_rows
            out[f"{split}_click_rate"] = float(pc.mean(t["label"]).as_py() or 0.0)
    return out


# --- markdown tables ----------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(summary: dict[str, Any]) -> str:
    if not summary.get("buckets"):
        return "_No training set in this run._"
    rows = [
        [b, f"{v['samples_pct']:.2f}", f"{v['clicks_pct']:.2f}", f"{v['items_pct']:.2f}",
         "n/a" if v["ctr"] is None else f"{v['ctr']:.3f}"]
        for b, v in summary["buckets"].items()
    ]
    return _table(["train PV bucket", "samples %", "clicks %", "items %", "click rate"], rows)


REFERENCE_ROWS = (("smoothed_mean", "reference (smoothed user + item mean)"),
                  ("oracle", "oracle (true click probability, synthetic)"))


def table_auc(metrics: dict[str, Any], variants: list[str], buckets: list[str],
              paper: dict[str, float]) -> str:
    rows = []
    for v in variants:
        m = _get(metrics, f"ranker.{v}")
        if not m:
            continue
        auc = m["auc"]
        row = [VARIANT_NAMES.get(v, v), _pct(auc["mean"]) + _ci(auc.get("ci95")),
               str(len(auc.get("seeds", [])))]
        for b in buckets:
            bm = _get(m, f"auc_by_bucket.{b}")
            row.append(_pct(bm["mean"]) if bm else "n/a")
        row.append(f"{paper[v]:.2f}" if v in paper else "")
        rows.append(row)
    if not rows:
        return "_Not run._"
    for key, name in REFERENCE_ROWS:  # on the same test rows: the floor and, synthetic, the ceiling
        ref = _get(metrics, f"reference.{key}")
        if ref:
            rows.append([name, _pct(ref["auc"]) + _ci(ref.get("ci95")), "",
                         *[_pct(ref["auc_by_bucket"].get(b)) for b in buckets], ""])
    return _table(["model", "AUC % [95% CI]", "seeds", *[f"PV {b}" for b in buckets], "paper AUC %"], rows)


def _valid(metrics: dict[str, Any], variant: str) -> str:
    """The variant's mean VALIDATION AUC (what early stopping and the config's choices saw)."""
    mean = _get(metrics, f"ranker.{variant}.valid_auc.mean")
    return "n/a" if mean is None else _pct(mean)


def table3(metrics: dict[str, Any]) -> str:
    full = _get(metrics, "ranker.full.auc.mean")
    rows = []
    for v in ("base", "no_mba", "no_raw_mm", "no_bidir", "full"):
        mean = _get(metrics, f"ranker.{v}.auc.mean")
        if mean is None:
            continue
        gap = _get(metrics, f"ranker.full_minus.{v}")
        delta = ""
        if gap and v != "full":  # variant - full = -(full - variant), interval flipped
            delta = f"{-100 * gap['diff']:+.2f} [{-100 * gap['ci95'][1]:+.2f}, " \
                    f"{-100 * gap['ci95'][0]:+.2f}]"
        elif full is not None and v != "full":
            delta = f"{100 * (mean - full):+.2f}"
        paper_delta = "" if v == "full" else f"{PAPER_TABLE3[v] - PAPER_TABLE3['full']:+.2f}"
        rows.append([VARIANT_NAMES[v], _pct(mean), delta, _valid(metrics, v), paper_delta])
    header = ["model", "AUC %", "variant - full (pts) [95% paired CI]", "valid AUC %",
              "paper delta"]
    return _table(header, rows) if rows else "_Not run._"


def gap_by_bucket(metrics: dict[str, Any], buckets: list[str], key: str = "by_bucket") -> str:
    """full - base per PV bucket with paired intervals (the paper's gain is largest when cold)."""
    by = _get(metrics, f"ranker.full_minus.base.{key}") or {}
    return "; ".join(f"PV {b}: {100 * g['diff']:+.2f} [{100 * g['ci95'][0]:+.2f}, "
                     f"{100 * g['ci95'][1]:+.2f}]" for b in buckets if (g := by.get(b)))


def table4(metrics: dict[str, Any]) -> str:
    hits = _get(metrics, "encoder.hit_at_30") or {}
    if not hits:
        return "_Not run._"
    rows = [[k, _pct(hits[k]), f"{PAPER_TABLE4[k]:.2f}" if k in PAPER_TABLE4 else ""]
            for k in ("off_the_shelf", "text_only", "image_only", "aligned") if k in hits]
    base = hits.get("off_the_shelf")
    ratio = "" if not base or hits.get("aligned") is None else f"{hits['aligned'] / base:.2f}x"
    return _table(["encoder", "Hit@30 %", "paper Hit@30 %"], rows) + (
        f"\n\nAligned / off-the-shelf: {ratio} (paper 1.45x)." if ratio else "")


def table2_title(metrics: dict[str, Any]) -> str:
    """'Table 2: AUC of Base and SaviorRec per PV bucket': the models that ran, no other."""
    ran = [SHORT_NAMES[v] for v in TABLE2 if _get(metrics, f"ranker.{v}.auc")]
    names = ", ".join(ran[:-1]) + f" and {ran[-1]}" if len(ran) > 1 else "".join(ran)
    return f"Table 2: AUC of {names} per PV bucket" if ran else "Table 2: AUC per PV bucket"


def timings_table(timings: dict[str, float]) -> str:
    """Seconds of each stage's last run, in pipeline order, and their total."""
    order = [f"{name}_s" for name in STAGE_NAMES]
    keys = [k for k in order if k in timings] + sorted(k for k in timings if k not in order)
    if not keys:
        return "_none recorded_"
    rows = [[k.removesuffix("_s"), f"{timings[k]:.1f}"] for k in keys]
    rows.append(["**total**", f"**{sum(timings[k] for k in keys):.1f}**"])
    return _table(["stage", "seconds"], rows)


def table5(metrics: dict[str, Any]) -> str:
    rows = []
    for dim, name in ((64, "full"), (32, "full_mba32"), (16, "full_mba16"), (8, "full_mba8")):
        mean = _get(metrics, f"ranker.{name}.auc.mean")
        if mean is not None:
            rows.append([str(dim), _pct(mean), _valid(metrics, name), f"{PAPER_TABLE5[dim]:.2f}"])
    if len(rows) < 2:
        return "_Not run (needs `saviorrec run --full-grid`)._"
    return _table(["MBA codebook dim", "AUC %", "valid AUC %", "paper AUC %"], rows)


def table_rqvae(metrics: dict[str, Any]) -> str:
    rows = []
    for mode in ("sinkhorn", "argmin"):
        m = _get(metrics, f"rqvae.{mode}")
        if not m:
            continue
        util = ", ".join(f"{100 * u:.1f}" for u in m.get("utilization_per_level", []))
        rows.append([mode, util, _pct(m.get("unique_ratio")), _pct(m.get("collision_rate"))])
    return _table(["assignment", "utilisation per level %", "unique ids %", "collision rate %"],
                  rows) if rows else "_Not run._"


# --- figures ------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, ax: Any, path: Path, *, title: str, xlabel: str, ylabel: str) -> bool:
    """Label, title (every figure has one), legend; write the PNG and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True


def figure_bucket_auc(metrics: dict[str, Any], buckets: list[str], path: Path) -> bool:
    """Test AUC per PV bucket of the Table 2 models with their 95% bootstrap intervals (error
    bars) and the reference; every bucket on the axis, one without an AUC marked n/a."""
    plt = _plt()
    x = np.arange(len(buckets), dtype=float)
    drawn = [v for v in TABLE2 if any(_get(metrics, f"ranker.{v}.auc_by_bucket.{b}.mean")
                                      is not None for b in buckets)]
    if not drawn:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    shift = 0.08  # side by side, so that overlapping intervals stay readable
    for i, v in enumerate(drawn):
        cells = [_get(metrics, f"ranker.{v}.auc_by_bucket.{b}") or {} for b in buckets]
        mean = np.array([np.nan if c.get("mean") is None else 100 * c["mean"] for c in cells])
        ci = [c.get("ci95") or [None, None] for c in cells]
        low = np.array([np.nan if lo is None else 100 * lo for lo, _ in ci])
        high = np.array([np.nan if hi is None else 100 * hi for _, hi in ci])
        err = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)
        ax.errorbar(x + (i - (len(drawn) - 1) / 2) * shift, mean, yerr=err, marker="o",
                    capsize=3, label=f"{VARIANT_NAMES[v]} (95% CI)")
    ref = _get(metrics, "reference.smoothed_mean.auc_by_bucket") or {}
    if any(ref.get(b) is not None for b in buckets):
        ax.plot(x, [np.nan if ref.get(b) is None else 100 * ref[b] for b in buckets],
                linestyle="--", marker="x", color="black", label="reference (smoothed means)")
    empty = [all(_get(metrics, f"ranker.{v}.auc_by_bucket.{b}.mean") is None for v in drawn)
             for b in buckets]
    ax.set_xticks(x, [f"{b}\n(no AUC)" if e else b for b, e in zip(buckets, empty, strict=True)])
    ax.set_xlim(-0.5, len(buckets) - 0.5)
    return _save(fig, ax, path, title="Test AUC per PV bucket with 95% bootstrap intervals (Table 2)",
                 xlabel="item PV bucket (train ratings)", ylabel="test AUC %")


def figure_feature_drop(metrics: dict[str, Any], buckets: list[str], path: Path) -> bool:
    """Fig. 4: AUC drop when removing id, statistics or multimodal features, per bucket."""
    plt = _plt()
    removed = {"no_id": "item id", "no_stats": "statistics", "no_mm": "multimodal"}
    full = [_get(metrics, f"ranker.full.auc_by_bucket.{b}.mean") for b in buckets]
    series = {}
    for v, name in removed.items():
        vals = [_get(metrics, f"ranker.{v}.auc_by_bucket.{b}.mean") for b in buckets]
        if all(x is not None for x in vals) and all(f is not None for f in full):
            series[name] = [100 * (f - x) for f, x in zip(full, vals, strict=True)]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    x = np.arange(len(buckets))
    for i, (name, drops) in enumerate(series.items()):
        ax.bar(x + i * width, drops, width, label=f"without {name}")
    ax.set_xticks(x + width * (len(series) - 1) / 2, buckets)
    ax.axhline(0, color="black", linewidth=0.8)
    return _save(fig, ax, path, title="AUC drop without a feature group, per PV bucket (Fig. 4)",
                 xlabel="item PV bucket", ylabel="AUC drop vs full (points)")


def figure_mba_norms(metrics: dict[str, Any], path: Path) -> bool:
    """Fig. 3: relative importance of each residual level (normalised mean L2 norms)."""
    norms = _get(metrics, "ranker.full.mba_level_importance")
    if not norms:
        return False
    plt = _plt()
    codebook = np.asarray(norms["codebook"], dtype=float)
    fusion = np.asarray(norms["fusion"], dtype=float)
    levels = np.arange(1, len(codebook) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(levels - 0.2, codebook / codebook.sum(), 0.4, label="MBA codebook")
    ax.bar(levels + 0.2, fusion / fusion.sum(), 0.4, label="fusion MLP weights")
    ax.set_xticks(levels)
    return _save(fig, ax, path, title="Relative importance of the residual levels (Fig. 3)",
                 xlabel="residual level", ylabel="relative importance")


def figure_embedding_map(cfg: Config, lake: Lake, path: Path, franchise: str) -> bool:
    """Fig. 5: t-SNE of item embeddings before (off-the-shelf) and after alignment."""
    before_path, after_path = lake.off_the_shelf_embeddings, lake.encoder_embeddings
    if not (before_path.exists() and after_path.exists() and lake.items.exists()):
        return False
    from sklearn.manifold import TSNE

    items = pq.read_table(lake.items, columns=["item_id", "title"]).to_pandas()
    before = read_table(before_path, OFF_THE_SHELF).to_pandas().set_index("item_id")
    after = read_table(after_path, EMBEDDINGS).to_pandas().set_index("item_id")
    ids = items["item_id"][items["item_id"].isin(before.index) & items["item_id"].isin(after.index)]
    rng = np.random.default_rng(0)
    highlight = items.set_index("item_id").loc[ids, "title"].str.contains(franchise, case=False)
    keep = np.asarray(ids)[highlight.to_numpy() | (rng.random(len(ids)) < min(1.0, 2000 / max(len(ids), 1)))]
    hl = items.set_index("item_id").loc[keep, "title"].str.contains(franchise, case=False).to_numpy()
    if hl.sum() < 2:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (name, table) in zip(axes, (("off-the-shelf towers", before), ("co-click aligned", after)),
                                 strict=True):
        x = np.stack(table.loc[keep, "embedding"].to_numpy()).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-8
        xy = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(x)
        ax.scatter(xy[~hl, 0], xy[~hl, 1], s=3, c="lightgray")
        ax.scatter(xy[hl, 0], xy[hl, 1], s=25, c="crimson", label=franchise)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="lower right")
    fig.suptitle(f"t-SNE of item embeddings, '{franchise}' titles highlighted (Fig. 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _gap(gap: dict[str, Any]) -> str:
    return (f"{100 * gap['diff']:+.2f} [{100 * gap['ci95'][0]:+.2f}, "
            f"{100 * gap['ci95'][1]:+.2f}]")


def summary_markdown(cfg: Config, lake: Lake, metrics: dict[str, Any],
                     figures: list[str]) -> str:
    """The report's first ~20 lines: the sanity checks (failed ones first), the headline AUCs
    with their intervals, and where the run's files are."""
    lines = [f"# saviorrec report: {cfg.run.name}", "", checks_markdown(sanity_checks(cfg, metrics)),
             ""]
    headline = [f"{VARIANT_NAMES[v]} {_auc(_get(metrics, f'ranker.{v}.auc'))}"
                for v in reversed(TABLE2) if _get(metrics, f"ranker.{v}.auc")]
    ref = _get(metrics, "reference.smoothed_mean")
    if ref:
        headline.append(f"non-neural reference {_auc(ref, 'auc')}")
    if gap := _get(metrics, "ranker.full_minus.base"):
        headline.append(f"full - base {_gap(gap)} points (paired)")
    lines.append(f"Test AUC % [95% bootstrap interval], mean over seeds {list(cfg.ranker.seeds)}: "
                 + ("; ".join(headline) if headline else "no ranker evaluated") + ".")
    files = [(lake.run_config, "the run's resolved configuration"),
             (lake.root / "models", "models"), (lake.export_dir, "the SavedModel"),
             (lake.feast_data, f"Feast repository (`feast -c {lake.feast_data} feature-views list`)")]
    lines += ["", "Files:",
              f"- this report and its figures: `{lake.report_dir}` (report.md"
              + "".join(f", {f}" for f in figures) + ")",
              f"- every statistic, once: `{lake.metrics}`",
              *(f"- {what}: `{path}`" for path, what in files if path.exists())]
    return "\n".join(lines)


# --- the report ---------------------------------------------------------------------------------
def model_versions(lake: Lake) -> dict[str, str]:
    """Versions of the data and models behind the report, from the files the stages wrote:
    data (the prepared source's checksum or seed), encoder, rqvae, exported ranker."""
    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text()) if path.is_file() else {}

    prepared = read(lake.prepare_summary)
    data = prepared.get("ratings_sha256") or (
        f"synthetic-seed-{prepared['seed']}" if "seed" in prepared else None)
    found = {
        "data": data,
        "encoder": read(lake.encoder_version).get("encoder_version"),
        "rqvae": read(lake.rqvae_version).get("rqvae_version"),
        "ranker_export": read(lake.export.meta).get("model_version"),
    }
    return {k: v for k, v in found.items() if v is not None}


def write_report(cfg: Config, *, franchise: str = "Harry Potter") -> dict[str, Any]:
    lake = Lake.from_config(cfg)
    out = lake.report_dir
    out.mkdir(parents=True, exist_ok=True)
    summary = data_summary(cfg, lake)
    if summary.get("buckets"):
        update_metrics(lake.metrics, "data.test_buckets", summary["buckets"])
    for key in ("train_samples", "valid_samples", "test_samples", "test_click_rate"):
        if key in summary:
            update_metrics(lake.metrics, f"data.{key}", summary[key])
    for key, value in model_versions(lake).items():
        update_metrics(lake.metrics, f"versions.{key}", value)
    metrics = read_metrics(lake.metrics)
    buckets = cfg.stats.bucket_labels()

    figures = {
        "auc_by_bucket.png": figure_bucket_auc(metrics, buckets, out / "auc_by_bucket.png"),
        "mba_level_importance.png": figure_mba_norms(metrics, out / "mba_level_importance.png"),
        "feature_drop.png": figure_feature_drop(metrics, buckets, out / "feature_drop.png"),
        "embedding_map.png": figure_embedding_map(cfg, lake, out / "embedding_map.png", franchise),
    }
    ref = _get(metrics, "reference.smoothed_mean")
    diff = _get(metrics, "ranker.full_minus.base")
    diff_line = ""
    if diff:
        diff_line = (f"\n\nfull - base: {_gap(diff)} AUC points, 95% paired bootstrap interval "
                     "(paper +0.83).")
        if by_bucket := gap_by_bucket(metrics, buckets):
            diff_line += f"\n\nfull - base per PV bucket (train PV, the protocol's): {by_bucket}."
        if by_seen := gap_by_bucket(metrics, buckets, "by_seen_bucket"):
            diff_line += ("\n\nfull - base per bucket of the candidate's PV at its sample time "
                          f"(what the ranker saw; 0 = truly cold): {by_seen}.")

    def fig(name: str, caption: str) -> str:
        return f"![{caption}]({name})" if figures[name] else f"_{caption}: not produced by this run._"

    v = metrics.get("versions", {})
    versions_line = ", ".join(f"{k} `{str(v[k])[:12] if k == 'data' else v[k]}`" for k in
                              ("data", "encoder", "rqvae", "ranker_export") if k in v) or "n/a"
    for check in sanity_checks(cfg, metrics):
        if check.ok is False:  # something to act on: said in the log too, not only the report
            log.warning("sanity check failed: %s", check.text)
    head = summary_markdown(cfg, lake, metrics, [k for k, ok in figures.items() if ok])
    md = f"""{head}

Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; code {v.get('code', '?')}, machine:
{metrics.get('machine', '?')}. AUC on the TEST split (each user's last
{int(100 * cfg.split.test_fraction)}% of events by time); models saw train only; intervals are 95%
bootstrap intervals; means over seeds {list(cfg.ranker.seeds)}.
Versions: {versions_line}.

## Table 1: data per PV bucket (test split)
{table1(summary)}

Samples: train {summary.get('train_samples', 'n/a')}, valid {summary.get('valid_samples', 'n/a')},
test {summary.get('test_samples', 'n/a')}; test click rate {summary.get('test_click_rate', float('nan')):.3f}.

## {table2_title(metrics)}
{table_auc(metrics, list(TABLE2), buckets, PAPER_TABLE2)}

Non-neural reference (smoothed user mean + item mean, logit sum): {_auc(ref, 'auc')}.{diff_line}

{fig('auc_by_bucket.png', 'AUC per PV bucket')}

## Table 3: ablations
{table3(metrics)}

## Table 4: encoder, i2i Hit@{cfg.encoder.hit_k} on test next clicks
{table4(metrics)}

### RQ-VAE semantic ids
{table_rqvae(metrics)}

## Table 5: MBA codebook dimension
{table5(metrics)}

## Fig. 3: relative importance of residual levels
{fig('mba_level_importance.png', 'MBA level importance')}

## Fig. 4: AUC drop without id, statistics or multimodal features
{fig('feature_drop.png', 'AUC drop per feature group')}

## Fig. 5: item embeddings before and after alignment
{fig('embedding_map.png', 'embedding map')}

## Stage timings (s, each stage's last run, in pipeline order)
{timings_table(metrics.get('timings', {}))}
"""
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(md)
    log.info("report written to %s", out / "report.md")
    return {"report": str(out / "report.md"), "figures": [k for k, v in figures.items() if v]}
