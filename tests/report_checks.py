"""What a report's sanity checks should say, worked out from a metrics.json alone (shared by
tests/test_report.py and tests/test_pipeline_quick.py)."""

from __future__ import annotations

from typing import Any

TABLE2 = {"base": "Base", "simtier": "SimTier", "full": "SaviorRec"}


def expected_failures(m: dict[str, Any]) -> list[str]:
    """What should fail, from the JSON alone: a Table 2 model at or under the reference, the
    aligned encoder at or under the off-the-shelf towers on Hit@30."""
    failed = []
    ref = m.get("reference", {}).get("smoothed_mean", {}).get("auc")
    for v in TABLE2:
        auc = m.get("ranker", {}).get(v, {}).get("auc", {}).get("mean")
        if auc is not None and ref is not None and auc <= ref:
            failed.append(f"{100 * auc:.2f}")
    hits = m.get("encoder", {}).get("hit_at_30", {})
    if "aligned" in hits and hits["aligned"] <= hits["off_the_shelf"]:
        failed.append(f"Hit@30 {100 * hits['aligned']:.2f}%")
    return failed
