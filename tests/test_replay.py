"""saviorrec replay (issue 28 item 4): the plan, the feature check and the comparison, on tables
built by hand with the expected values worked out by hand.

The live loop itself (run_replay: the stream, the service and onboarding as processes) runs in
the slow test at the end, on a tiny world that the test builds with ``saviorrec run``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saviorrec.config import REPO_ROOT, load_config
from saviorrec.lake import Lake, read_table
from saviorrec.metrics import auc
from saviorrec.replay import (
    SCORE_TOLERANCE,
    ReplayPlan,
    compare,
    events_fed,
    feature_differences,
    plan_replay,
    replay_entry,
    rounds,
    stream_files,
)
from saviorrec.schema import ITEM_STAT_NUMERIC, SAMPLES, SEQ_STAT_PREFIX, USER_STAT_NUMERIC

DAY = 86_400
T0 = datetime(2021, 1, 10, tzinfo=UTC)


def _samples(rows: list[tuple[int, int, int, float, str]]) -> pa.Table:
    """(user, item, label, days after T0, split) -> SAMPLES."""
    return pa.Table.from_pylist(
        [{"user_id": u, "item_id": i, "label": y, "rating": 4.0 if y else 2.0,
          "event_timestamp": T0 + timedelta(days=d), "split": s} for u, i, y, d, s in rows],
        schema=SAMPLES.arrow_schema())


def _test_rows(rows: list[tuple[int, int, int, float, int]]) -> pa.Table:
    """(user, item, label, days after T0, eval_pv_bucket): the columns the plan reads."""
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "item_id": pa.array([r[1] for r in rows], pa.int64()),
        "label": pa.array([r[2] for r in rows], pa.int64()),
        "event_timestamp": pa.array([T0 + timedelta(days=r[3]) for r in rows],
                                    pa.timestamp("us", tz="UTC")),
        "eval_pv_bucket": pa.array([r[4] for r in rows], pa.int64()),
    })


# The world: items 1, 2 have train events; 3 first appears on day 2.5 (a validation event of
# user 2), 4 on day 3.2 (a test event); user 1's train event on day 2.1 (after the start: another
# user's split) is replayed too; the day-4 event is after the last scored test row.
SAMPLES_ROWS = [
    (1, 1, 1, 0.5, "train"), (2, 2, 0, 1.0, "train"), (1, 2, 1, 1.5, "train"),
    (2, 1, 1, 2.05, "valid"), (1, 1, 0, 2.1, "train"), (2, 3, 1, 2.5, "valid"),
    (1, 4, 1, 3.2, "test"), (2, 4, 0, 3.3, "test"), (2, 1, 1, 3.6, "test"),
    (1, 3, 1, 4.5, "test"),
]
TEST_ROWS = [  # in the test split's own order (not time order)
    (2, 1, 1, 3.6, 3), (1, 4, 1, 3.2, 0), (2, 4, 0, 3.3, 0), (1, 3, 1, 4.5, 1),
]


def test_the_plan_starts_at_the_first_valid_event_and_onboards_items_where_first_seen() -> None:
    plan = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                       max_test_rows=0)
    assert plan.start == T0 + timedelta(days=2.05)
    assert plan.warm_items.tolist() == [1, 2]
    assert plan.before.num_rows == 3  # the three train events before the start
    assert plan.before.column("event_timestamp").to_pylist() == sorted(
        plan.before.column("event_timestamp").to_pylist())
    day = (int(T0.timestamp()) // DAY)
    # one step per period with test rows: day 2 (the valid event, user 1's later train event,
    # item 3 first seen; nothing to score) goes into day 3's file
    assert [s.period for s in plan.steps] == [day + 3, day + 4]
    assert [s.events.num_rows for s in plan.steps] == [6, 1]
    assert [s.new_items for s in plan.steps] == [[3, 4], []]
    # test rows in time order: (1,4) 3.2, (2,4) 3.3, (2,1) 3.6, (1,3) 4.5
    assert plan.test.column("row").to_pylist() == [1, 2, 0, 3]
    assert [s.test_rows.tolist() for s in plan.steps] == [[0, 1, 2], [3]]
    assert plan.test_rows_total == 4


def _times(table: pa.Table) -> list[float]:
    """Event times as days after T0."""
    return [round((t - T0).total_seconds() / DAY, 2)
            for t in table.column("event_timestamp").to_pylist()]


def test_user_cuts_feed_each_user_exactly_the_events_before_each_of_their_rows() -> None:
    """The stream mode: user 2 has test rows at 3.3 and 3.6, user 1 at 3.2 and 4.5."""
    plan = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                       max_test_rows=0, user_cuts=True)
    assert plan.user_cuts
    day3, day4 = plan.steps
    # day 3: first every event before each user's first row there (none of day 3 itself: the
    # stream's clock is behind for the first round) ...
    assert _times(day3.events) == [2.05, 2.1, 2.5]
    assert day3.clock_behind
    assert [r.tolist() for r in day3.stream_rows] == [[0, 1], [2]]  # (1,4) 3.2, (2,4) 3.3; 3.6
    # ... then user 2's event at 3.3 (its own row's), before their row at 3.6; user 1's 3.2 and
    # user 2's 3.6 wait for the next step; no tail (the feed at 3.3 brought day 3)
    assert [_times(f) for f in day3.stream_feeds] == [[3.3]]
    assert day3.tail is None
    # day 4: the waiting events first; user 1's own 4.5 comes after their row, as the tail (no
    # feed of the step holds day 4, and the other modes score with the clock at day 4)
    assert _times(day4.events) == [3.2, 3.6]
    assert [r.tolist() for r in day4.stream_rows] == [[3]] and day4.stream_feeds == []
    assert day4.clock_behind and _times(day4.tail) == [4.5]
    assert [s.new_items for s in plan.steps] == [[3, 4], []]  # onboarding as without cuts
    assert [s.test_rows.tolist() for s in plan.steps] == [[0, 1, 2], [3]]
    # every event fed once, in the same steps as without cuts, minus none
    whole = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                        max_test_rows=0)
    assert events_fed(plan) == events_fed(whole) == 7
    assert (stream_files(whole), stream_files(plan)) == (2, 4)


def _fed(plan: ReplayPlan) -> list[tuple[int, int, float]]:
    """(user, item, days after T0) of every event the plan feeds: the start's file, then each
    step's events, stream feeds and tail."""
    tables = [plan.before] + [t for s in plan.steps
                              for t in (s.events, *s.stream_feeds, s.tail) if t is not None]
    return sorted((r["user_id"], r["item_id"], round((r["event_timestamp"] - T0).total_seconds()
                                                     / DAY, 2))
                  for t in tables for r in t.to_pylist())


@pytest.mark.parametrize("cap", [0, 2])
@pytest.mark.parametrize("extra", [[], [(3, 2, 0, 4.2, "valid")]])
def test_every_event_up_to_the_last_scored_row_is_fed_exactly_once(extra: list[tuple],
                                                                   cap: int) -> None:
    """With cuts or without. The extra event (user 3, day 4.2, no test row) brings day 4 into
    the last step's first file, so the stream's clock is not behind there and no tail is needed
    for it; user 1's own event at 4.5 (their row's time) still waits at their cut: it is fed as
    the last step's tail, not dropped."""
    rows = SAMPLES_ROWS + extra
    plans = {cuts: plan_replay(_samples(rows), _test_rows(TEST_ROWS), period_seconds=DAY,
                               max_test_rows=cap, user_cuts=cuts) for cuts in (False, True)}
    last_day = {0: 4.5, 2: 3.3}[cap]  # the last scored test row's time
    expected = sorted((u, i, d) for u, i, _, d, _ in rows if d <= last_day)
    for plan in plans.values():
        assert _fed(plan) == expected
        assert events_fed(plan) + plan.before.num_rows == len(expected)
    if extra and not cap:
        last = plans[True].steps[-1]
        assert _times(last.events) == [3.2, 3.6, 4.2] and not last.clock_behind
        assert last.stream_feeds == [] and _times(last.tail) == [4.5]


def test_the_cap_keeps_the_first_test_rows_and_stops_the_events_after_the_last() -> None:
    plan = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                       max_test_rows=2)
    assert plan.test.column("row").to_pylist() == [1, 2]
    assert [s.events.num_rows for s in plan.steps] == [5]  # up to day 3.3 only
    assert plan.test_rows_total == 4


def test_new_items_rows_are_those_of_items_without_a_training_event() -> None:
    plan = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                       max_test_rows=0, rows="new_items")
    assert plan.test.column("item_id").to_pylist() == [4, 4, 3]
    assert [s.test_rows.tolist() for s in plan.steps] == [[0, 1], [2]]
    assert [s.new_items for s in plan.steps] == [[3, 4], []]
    assert (plan.test_rows_total, plan.selected_rows) == (4, 3)
    capped = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                         max_test_rows=2, rows="new_items")
    assert capped.selected_rows == 3 and capped.test.num_rows == 2


def test_a_run_without_held_back_events_is_refused() -> None:
    with pytest.raises(ValueError, match="no validation or test event"):
        plan_replay(_samples(SAMPLES_ROWS[:3]), _test_rows([]), period_seconds=DAY,
                    max_test_rows=0)


def test_a_test_row_before_the_start_is_refused() -> None:
    with pytest.raises(ValueError, match="before the first validation/test event"):
        plan_replay(_samples(SAMPLES_ROWS), _test_rows([(1, 1, 1, 1.0, 0)]),
                    period_seconds=DAY, max_test_rows=0)


def _row(item_id: int = 7) -> dict:
    stats = dict(zip(ITEM_STAT_NUMERIC, [10.0, 4.0, 0.35, 3.0, 1.0, 0.4], strict=False))
    return {"item_id": item_id, **stats, "pv_bucket": 2, "seq_item_ids": [0, 5],
            **dict(zip(USER_STAT_NUMERIC, [3.0, 2.0, 0.6], strict=True)),
            **{SEQ_STAT_PREFIX + n: [0.0, float(k)] for k, n in enumerate(ITEM_STAT_NUMERIC)},
            SEQ_STAT_PREFIX + "pv_bucket": [0, 1]}


def _online(row: dict) -> tuple[SimpleNamespace, dict]:
    item = {n: row[n] for n in ITEM_STAT_NUMERIC} | {
        "pv_bucket": row["pv_bucket"], "embedding": [0.5, -1.0], "semantic_ids": [1, 2, 0]}
    seq_item = {n: float(k) for k, n in enumerate(ITEM_STAT_NUMERIC)} | {
        "pv_bucket": 1, "embedding": [0.25, 0.75], "semantic_ids": [3, 4, 2]}
    sequence = SimpleNamespace(item_ids=[0, 5], stats=(3.0, 2.0, 0.6))
    return sequence, {row["item_id"]: item, 5: seq_item}


def test_feature_differences_names_what_the_store_gave_otherwise() -> None:
    row = _row()
    trained = {7: {"embedding": [0.5, -1.0], "semantic_ids": [1, 2, 0]},
               5: {"embedding": [0.25, 0.75], "semantic_ids": [3, 4, 2]}}
    sequence, items = _online(row)
    assert feature_differences(row, sequence, items, trained) == ""
    # a sequence item's content (an onboarded item embedded otherwise) and pv bucket
    items[5]["embedding"] = [0.25, 0.76]
    assert feature_differences(row, sequence, items, trained) == "sequence embedding"
    items[5] |= {"embedding": [0.25, 0.75], "semantic_ids": [3, 4, 0], "pv_bucket": 2}
    assert feature_differences(row, sequence, items, trained) == \
        "sequence item_stats, sequence disambiguation index"
    items[5] |= {"semantic_ids": [3, 4, 2], "pv_bucket": 1}
    items[7]["pv"] = 11.0
    items[7]["semantic_ids"] = [1, 2, 1]  # another disambiguation index
    items[5]["ctr"] = 0.99
    assert feature_differences(row, sequence, items, trained) == \
        "item_stats, disambiguation index, sequence item_stats"
    items[7]["semantic_ids"] = [1, 3, 0]  # a code the ranker reads
    assert feature_differences(row, sequence, items, trained) == \
        "item_stats, semantic codes, sequence item_stats"
    sequence.item_ids, sequence.stats = [5, 5], None
    assert feature_differences(row, sequence, items, {}) == "item_stats, sequence, user_stats"


def test_rounds_write_one_user_row_per_user_and_score_its_rows_together() -> None:
    # rows in time order: user 1 twice with row A then once with B; user 2 with C twice
    keys = [(1, "A"), (2, "C"), (1, "A"), (1, "B"), (2, "C")]
    assert rounds(keys) == [{1: [0, 2], 2: [1, 4]}, {1: [3]}]
    # as_of_start: every row of a user in one request
    assert rounds([(u, None) for u, _ in keys]) == [{1: [0, 2, 3], 2: [1, 4]}]
    assert rounds([]) == []


def test_the_results_entry_keeps_a_new_items_run_over_a_capped_first_run() -> None:
    cold = {"rows_selected": "new_items", "capped": False, "new_items": {"rows": 321}}
    capped = {"rows_selected": "first", "capped": True, "new_items": {"rows": 2}, "rows": 50}
    whole = {"rows_selected": "first", "capped": False, "new_items": {"rows": 321}, "rows": 9}
    entry = replay_entry(None, cold)
    assert entry == {"new_items": {"rows": 321, "run": cold}}
    assert replay_entry(entry, capped) == {**capped, "new_items": {"rows": 321, "run": cold}}
    assert replay_entry(entry, whole) == whole  # its own new_items: every new-item row
    assert replay_entry(capped, cold)["rows"] == 50  # the first run's figures stay


def test_compare_by_hand() -> None:
    plan = plan_replay(_samples(SAMPLES_ROWS), _test_rows(TEST_ROWS), period_seconds=DAY,
                       max_test_rows=0)
    # plan.test (time order): (1,4,y1,b0) (2,4,y0,b0) (2,1,y1,b3) (1,3,y1,b1)
    offline = np.array([0.6, 0.4, 0.3, 0.8], np.float32)
    online = offline.copy()
    online[2] += 5e-5  # within the tolerance
    online[3] = 0.2  # beyond: listed with its reason
    base = np.array([0.1, 0.9, 0.5, 0.5], np.float32)
    labels = np.array([1, 0, 1, 1])
    result = compare(plan, online, offline, base, ["0", "1-5", "6-20", ">20"],
                     ["", "", "", "item_stats"], n_resamples=50)
    assert result["rows"] == 4 and not result["capped"]
    # positives 0.6, 0.3(0005), 0.2 (online) or 0.8 (offline) against the one negative, 0.4
    assert result["online_auc"] == auc(labels, online) == pytest.approx(1 / 3)
    assert result["offline_auc"] == pytest.approx(2 / 3)
    assert result["skew_auc"] == pytest.approx(1 / 3 - 2 / 3)
    assert result["rows_score_diff_gt_1e-4"] == 1
    assert result["max_abs_score_diff"] == pytest.approx(0.6, abs=1e-6)
    assert SCORE_TOLERANCE == 1e-4
    assert result["differing_rows"] == [{"row": 3, "user_id": 1, "item_id": 3, "online": pytest.approx(0.2),
                                         "offline": pytest.approx(0.8),
                                         "features_differing": "item_stats"}]
    assert result["score_diff_reasons"] == {"item_stats": 1}
    assert result["by_bucket"]["rows"] == {"0": 2, "1-5": 1, "6-20": 0, ">20": 1}
    assert result["by_bucket"]["online"]["0"] == pytest.approx(1.0)
    assert np.isnan(result["by_bucket"]["online"]["1-5"])  # one class only
    # new items: 3 and 4, rows 0, 1 and 3 of plan.test: labels 1, 0, 1
    new = result["new_items"]
    assert new["rows"] == 3 and new["items"] == 2 and new["items_scored"] == 2
    assert new["auc"]["full"]["value"] == pytest.approx(0.5)  # 0.6 > 0.4, 0.2 < 0.4
    assert new["auc"]["base"]["value"] == pytest.approx(0.0)  # 0.1 and 0.5 < 0.9
    assert new["auc"]["full_minus_base"]["value"] == pytest.approx(0.5)


# --- end to end: a tiny world built for real, replayed through the real processes -------------
# A synthetic world small enough to build (every stage: Spark, the pretrained towers, SaviorEnc,
# RQ-VAE, Feast, Keras, the SavedModel export) and replay (a Spark stream, the service) in a few
# minutes on two cores: 8 days, so that the replay has at most 8 stream steps.
WORLD = {
    "extends": str(REPO_ROOT / "configs" / "synthetic.yaml"),
    "synthetic": {"n_events": 4000, "n_users": 200, "n_items": 300, "n_topics": 5,
                  "cold_item_fraction": 0.15, "image_size": 16, "span_days": 8},
    "encoder": {"epochs": 1, "fusion_layers": 1, "image_size": 64, "batch_size": 64},
    "ranker": {"variants": ["base", "full"], "seeds": [0], "epochs": 1,
               "bootstrap_samples": 20},
    "spark": {"shuffle_partitions": 2},
}
STAGES = ("prepare", "spark", "encode", "rqvae", "features", "training_set", "train",
          "evaluate", "export")


@dataclass
class BuiltWorld:
    config: Path
    lake: Lake
    cli: Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> BuiltWorld:
    """The world built by ``saviorrec run`` (every stage to the export)."""
    from conftest import world_cli

    config, cli = world_cli(tmp_path_factory.mktemp("replay"), WORLD, "replay-e2e")
    cli("run", *[arg for stage in STAGES for arg in ("--only", stage)])
    return BuiltWorld(config, Lake.from_config(load_config(config)), cli)


@pytest.mark.slow
@pytest.mark.parametrize("online_store",
                         ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_replay_end_to_end_serves_what_the_offline_evaluation_scored(
        world: BuiltWorld, online_store: str, tmp_path: Path) -> None:
    """``saviorrec replay --rows new_items`` (every test row of an item without a training
    event) over the local profile's sqlite store, and over a redis-server (production profile)."""
    from conftest import free_port

    results = tmp_path / "live.json"
    world.cli("replay", "--rows", "new_items", "--max-test-rows", "0", "--port",
              str(free_port()), "--online-store", online_store, "--results", str(results))
    new_items = json.loads(results.read_text())["replay"]["new_items"]
    run = new_items["run"]
    assert run["online_store"] == online_store
    # every test row of a cold item scored, nothing capped; items onboarded where first seen
    lake = world.lake
    test = pq.read_table(lake.training("test"), columns=["item_id"]).column("item_id").to_numpy()
    samples = read_table(lake.spark("samples"), SAMPLES).select(["item_id", "split"]).to_pandas()
    warm = set(samples.loc[samples["split"] == "train", "item_id"])
    cold_rows = int((~np.isin(test, list(warm))).sum())
    assert cold_rows >= 10  # this world has a few dozen
    assert run["rows"] == new_items["rows"] == cold_rows and not run["capped"]
    assert run["items_onboarded"] == new_items["items"] >= new_items["items_scored"] >= 1
    assert run["events_replayed"] > 0
    # per_row (user rows exactly right): the live loop (the stream's statistics, onboarding's
    # embeddings and semantic ids, the service) scores every row as the offline evaluation did
    # (onboarding recomputes an embedding within ~1e-5, which moves no score by 1e-4 here)
    assert run["rows_score_diff_gt_1e-4"] == 0, run["differing_rows"]
    assert run["online_auc"] == pytest.approx(run["offline_auc"], abs=1e-12)
    # both modes scored in the one pass, fewer requests than rows in as_of_start (a user's rows
    # of one step share one request)
    start = run["user_features_as_of_start"]
    assert start["rows"] == run["rows"] and start["rank_requests"] <= run["rank_requests"]
    assert run["skew_auc"] == pytest.approx(start["online_auc"] - start["offline_auc"])
    assert set(new_items["auc"]) == {"full", "base", "full_minus_base"}
    # the stream mode (the same pass): the stream's own user rows, each row scored when the
    # stream has seen exactly the user's events before it, score as the training rows did
    stream = run["user_features_stream"]
    assert stream["rows"] == run["rows"]
    assert stream["rows_score_diff_gt_1e-4"] == 0, stream["differing_rows"]
    assert stream["online_auc"] == pytest.approx(stream["offline_auc"], abs=1e-12)
    assert run["modes_in_one_pass"] == ["per_row", "as_of_start", "stream"]
