"""The replay: the held-back period of a finished run streamed through the live system.

``saviorrec replay --config C`` (issue 28 item 4). The run must be finished (events, training
set, the served model's export and test predictions, the Feast repository applied). Then:

1. **Plan** (:func:`plan_replay`, pure): the replay starts at the first validation or test
   event. The items with at least one training event are *warm*; every other item that has an
   event from the start on is *new* and is onboarded from its metadata in the period it first
   appears. Every event from the start on, whatever its split, goes to the stream (statistics
   count them all), one file per snapshot period (``stats.snapshot_cadence``); the test rows of
   the training set (``Lake.training("test")``) are scored in time order, the first
   ``replay.max_test_rows`` of them (0: all; the cap is written in the output).
2. **Live system** (:func:`run_replay`): a fresh online store (``online_store``: a new sqlite
   file, the local profile; or a redis-server of the replay's own, the production profile)
   holding the warm items' multimodal rows and the users' sequence rows as of the start;
   ``saviorrec stream item-stats`` (item statistics and user rows) running over the replay's
   inbox, first fed the events before the start (so it holds the batch job's statistics as of the start); ``saviorrec serve`` with
   POST /items and no item cache (``serving.item_cache_ttl_s: 0``). Per period P: onboard the
   items first seen in P (POST /items), drop P's events in the inbox and wait until the stream
   has committed them (its clock is then P: a row stamped P counts events strictly before P, so
   the events of P cannot leak into P's rows), then score P's test rows: one POST /rank per
   user and distinct user row (:func:`rounds`), every candidate of it at once.
3. **Compare** (:func:`compare`, pure): online scores against the offline evaluation of the same
   model on the same rows (the run's ``predictions_test.parquet`` of the exported variant and
   seed): AUC of each, their difference, per PV bucket, the rows whose scores differ by more
   than ``SCORE_TOLERANCE`` with the features that differ, and the new items' AUC, full (online)
   against the base variant's offline predictions on the same rows, with bootstrap intervals.

User features. The service reads each user's sequence and statistics from the online store.
Three modes (``USER_FEATURES``), all scored in the one pass of :func:`run_replay` (the stream
and onboarding are the same for all; only the user rows differ):

- ``stream``: the user rows that the stream job pushed (``spark_jobs/item_stats_stream.py``
  keeps them in the same micro-batch as item statistics); the replay writes none. The plan cuts
  each user's events at their test rows' times (:func:`plan_replay`, ``user_cuts``), so that
  when a row (u, t) is scored the stream has seen exactly u's events strictly before t: the
  training row's. Figures under ``user_features_stream``.
- ``per_row``: before each test row is scored, its own training row's sequence and user
  statistics are written to the online store (``write_to_online_store``): a stand-in for a
  user-feature stream that is exactly right. What then differs is the live loop's own doing
  (the stream's item statistics, onboarding's embeddings and semantic ids, the service): the
  ``replay`` key's figures and the |online - offline| AUC target.
- ``as_of_start``: the user rows materialised as of the replay start, as a system without the
  user stream would serve them (a batch sequence row stamped t holds the clicks strictly before
  t, so even at the start a user's latest row misses their last event); snapshotted before
  anything is fed and put in for this mode's turn. ``skew_auc`` = online - offline AUC of this
  mode measures what that lag costs (``replay.user_features_as_of_start``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from saviorrec.config import REPLAY_USER_FEATURES as USER_FEATURES
from saviorrec.config import REPO_ROOT, Config, dump_config
from saviorrec.lake import ExportFiles, Lake, read_table, write_table
from saviorrec.metrics import auc, auc_by_bucket, bootstrap_auc, paired_bootstrap_diff
from saviorrec.schema import (
    EVENTS,
    ITEM_MULTIMODAL,
    ITEM_STAT_NUMERIC,
    ITEMS,
    PADDING_ITEM_ID,
    PREDICTIONS,
    SAMPLES,
    SEQ_STAT_PREFIX,
    SEQUENCES,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    TRAINING_STATS,
    USER_STAT_NUMERIC,
)
from saviorrec.training_stats import expand

log = logging.getLogger(__name__)

RESULTS = REPO_ROOT / "benchmarks" / "results" / "live_coldstart.json"  # its "replay" key
SCORE_TOLERANCE = 1e-4  # per-row |online - offline| above this is listed and explained
LISTED_ROWS = 50  # differing rows written out in full
TEST_COLUMNS = ("user_id", "item_id", "label", "event_timestamp", "eval_pv_bucket")


# --- the plan (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One snapshot period of the replay.

    Fed and scored in this order: ``events``; the ``stream`` mode's ``stream_rows[0]``; then for
    each k, ``stream_feeds[k]`` and ``stream_rows[k + 1]``; ``tail``; every other mode's
    ``test_rows``. Without user cuts (no ``stream`` mode) there is one feed, ``events``."""

    period: int  # period index: event seconds // snapshot seconds
    events: pa.Table  # EVENTS rows fed first, time order
    new_items: list[int]  # first seen in this period: onboarded before anything else
    test_rows: np.ndarray  # positions in ReplayPlan.test, scored in this period, time order
    stream_rows: list[np.ndarray] = field(default_factory=list)  # the stream mode's rounds
    stream_feeds: list[pa.Table] = field(default_factory=list)  # fed between those rounds
    tail: pa.Table | None = None  # fed after the stream mode's rounds (see plan_replay)
    clock_behind: bool = False  # ``events`` hold no event of the period (see plan_replay)


@dataclass(frozen=True)
class ReplayPlan:
    start: datetime  # the first validation or test event
    warm_items: np.ndarray  # items with a training event: in the store at the start
    before: pa.Table  # EVENTS before the start (all train): the stream's first file
    steps: list[Step]
    test: pa.Table  # the scored test rows (TEST_COLUMNS + "row": position in the test split)
    test_rows_total: int  # test rows in the split
    selected_rows: int  # of those, the rows of the selection (ROW_SELECTIONS), before the cap
    user_cuts: bool = False  # each user's events cut at their test rows' times (stream mode)


def _seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy() // 1_000_000


ROW_SELECTIONS = ("first", "new_items")
ONLINE_STORES = ("sqlite", "redis")  # the local profile's store; the production profile's


def plan_replay(samples: pa.Table, test: pa.Table, *, period_seconds: int,
                max_test_rows: int, rows: str = "first", user_cuts: bool = False) -> ReplayPlan:
    """The replay's steps from the run's SAMPLES (every event, with its split) and its test
    training rows (TRAINING_SAMPLES, the order of the predictions file).

    ``rows``: "first" scores the test rows in time order; "new_items" only those of items
    without a training event (the cold-start rows); either capped at ``max_test_rows``. A step
    is a period with rows to score: the events of the periods before it that have none go into
    its file too (a row stamped P counts the events before P, wherever they were fed, so the
    stream's rows as of P are the same; fewer micro-batches).

    ``user_cuts`` (the ``stream`` user mode): a test row (u, t) is trained on u's events
    strictly before t, so when it is scored the stream must have seen exactly those of u's
    events (other users' events do not touch u's row). Each user with test rows in P has
    distinct test times t_1 < ... < t_K; their events are cut there: those before t_1 go in
    ``events`` (with every event of the users without a test row in P, and of the periods
    before), those in [t_k, t_k+1) in ``stream_feeds[k - 1]``, fed after ``stream_rows[k - 1]``
    (the rows at t_k) are scored; those from t_K on wait for the next step's ``events`` (no
    extra micro-batch). The stream's clock (item statistics) is the period of the latest event
    fed: P once ``events`` holds an event of P. When it holds none (every event of P belongs to
    a user at or after their first test time in P: ``clock_behind``), the rows of
    ``stream_rows[0]`` see item rows of an earlier snapshot, and, if no stream feed brings P
    either, the waiting events are fed as ``tail`` before the other modes score, so that their
    rows see P as without cuts. The last step feeds its waiting events as ``tail`` too (no step
    follows to take them), so every event up to the last scored row is fed once, as without
    cuts. Without ``user_cuts`` a step feeds its events whole."""
    if rows not in ROW_SELECTIONS:
        raise ValueError(f"rows {rows!r}: one of {ROW_SELECTIONS}")
    split = samples.column("split").to_numpy(zero_copy_only=False)
    if not (split != "train").any():
        raise ValueError("samples hold no validation or test event: nothing to replay")
    seconds = _seconds(samples.column("event_timestamp"))
    micros = pc.cast(samples.column("event_timestamp"),
                     pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    start_us = int(micros[split != "train"].min())
    order = np.lexsort((samples.column("item_id").to_numpy(), samples.column("user_id").to_numpy(),
                        micros))
    samples = samples.take(pa.array(order))
    seconds, micros, split = seconds[order], micros[order], split[order]
    item_ids = samples.column("item_id").to_numpy()
    warm = np.unique(item_ids[split == "train"])
    events = samples.select(list(EVENTS.names)).cast(EVENTS.arrow_schema())
    before_mask = micros < start_us  # all train, by the choice of the start

    test_table = test.select(list(TEST_COLUMNS)).append_column(
        "row", pa.array(np.arange(test.num_rows), pa.int64()))
    t_us = pc.cast(test_table.column("event_timestamp"),
                   pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    t_order = np.lexsort((test_table.column("item_id").to_numpy(),
                          test_table.column("user_id").to_numpy(), t_us))
    if rows == "new_items":
        cold = ~np.isin(test_table.column("item_id").to_numpy(), warm)
        t_order = t_order[cold[t_order]]
    selected = len(t_order)
    if max_test_rows:
        t_order = t_order[:max_test_rows]
    test_table = test_table.take(pa.array(t_order))
    t_us = t_us[t_order]
    if len(t_us) and t_us.min() < start_us:
        raise ValueError(f"test row at {t_us.min()} us is before the first validation/test "
                         f"event ({start_us} us): the test split and the samples disagree")
    last_us = int(t_us.max()) if len(t_us) else start_us
    replayed = (micros >= start_us) & (micros <= last_us)  # nothing after the last scored row
    periods = seconds // period_seconds
    t_periods = (t_us // 1_000_000) // period_seconds

    seen = set(warm.tolist())
    steps, fed_before = [], np.iinfo(np.int64).min
    users = samples.column("user_id").to_numpy()
    t_users = test_table.column("user_id").to_numpy()
    waiting = np.zeros(len(micros), bool)  # events held back at the last step's cuts
    for period in np.unique(t_periods):
        mask = replayed & (periods > fed_before) & (periods <= period)
        new = []
        for item in item_ids[mask]:  # time order: first appearance
            if int(item) not in seen:
                seen.add(int(item))
                new.append(int(item))
        scored = np.flatnonzero(t_periods == period)
        if not user_cuts:
            steps.append(Step(int(period), events.filter(pa.array(mask)), new, scored,
                              [scored]))
            fed_before = period
            continue
        # round[k]: the number of the user's test times in P at or before event k (its feed);
        # events with round == the user's number of test times wait for the next step
        step_events = np.flatnonzero(mask | waiting)
        feed = np.zeros(step_events.size, np.int64)
        later = np.zeros(step_events.size, bool)
        row_round = np.zeros(scored.size, np.int64)
        for user in np.unique(t_users[scored]):
            mine = t_users[scored] == user
            times = np.unique(t_us[scored][mine])
            row_round[mine] = np.searchsorted(times, t_us[scored][mine])
            on = users[step_events] == user
            feed[on] = np.searchsorted(times, micros[step_events][on], side="right")
            later[on] = feed[on] == times.size
        n_rounds = int(row_round.max()) + 1
        feeds = [step_events[(feed == k) & ~later] for k in range(n_rounds)]
        waiting = np.zeros(len(micros), bool)
        waiting[step_events[later]] = True

        def take(idx: np.ndarray) -> pa.Table:
            return events.take(pa.array(idx, pa.int64()))

        behind = not (periods[feeds[0]] == period).any()
        tail = None
        last = period == t_periods.max()  # no next step to take the waiting events
        if (last and waiting.any()) or (
                behind and not any((periods[f] == period).any() for f in feeds[1:])):
            tail, waiting = take(np.flatnonzero(waiting)), np.zeros(len(micros), bool)
        steps.append(Step(int(period), take(feeds[0]), new, scored,
                          [scored[row_round == k] for k in range(n_rounds)],
                          [take(f) for f in feeds[1:]], tail, behind))
        fed_before = period
    return ReplayPlan(datetime.fromtimestamp(start_us / 1e6, UTC), warm,
                      events.filter(pa.array(before_mask)), steps, test_table, test.num_rows,
                      selected, user_cuts)


def events_fed(plan: ReplayPlan) -> int:
    """Events fed to the stream by the steps (the start's file not counted)."""
    return int(sum(s.events.num_rows + sum(f.num_rows for f in s.stream_feeds)
                   + (s.tail.num_rows if s.tail is not None else 0) for s in plan.steps))


def stream_files(plan: ReplayPlan) -> int:
    """Event files (micro-batches) the steps feed: empty ones are not written."""
    return int(sum((s.events.num_rows > 0) + sum(f.num_rows > 0 for f in s.stream_feeds)
                   + (s.tail is not None and s.tail.num_rows > 0) for s in plan.steps))


# --- the comparison (pure) ---------------------------------------------------------------------
def compare(plan: ReplayPlan, online: np.ndarray, offline: np.ndarray, base: np.ndarray | None,
            bucket_labels: list[str], differences: list[str], *, n_resamples: int = 1000,
            seed: int = 0) -> dict[str, Any]:
    """The ``replay`` result: ``online`` scores (served), ``offline`` (the same model's
    predictions) and ``base`` (the base variant's predictions, or None) on ``plan.test``;
    ``differences[k]`` names the features of row k that differed online ("" when none seen)."""
    test = plan.test
    labels = test.column("label").to_numpy()
    buckets = test.column("eval_pv_bucket").to_numpy()
    online_auc, offline_auc = auc(labels, online), auc(labels, offline)
    diff = np.abs(online.astype(np.float64) - offline.astype(np.float64))
    differing = np.flatnonzero(diff > SCORE_TOLERANCE)
    reasons: dict[str, int] = {}
    for k in differing:
        reason = differences[k] or "no feature difference seen"
        reasons[reason] = reasons.get(reason, 0) + 1
    listed = [{"row": int(test.column("row")[k].as_py()), "user_id": int(test.column("user_id")[k].as_py()),
               "item_id": int(test.column("item_id")[k].as_py()),
               "online": float(online[k]), "offline": float(offline[k]),
               "features_differing": differences[k] or "none seen"}
              for k in differing[:LISTED_ROWS]]
    first_seen = {i for step in plan.steps for i in step.new_items}
    new_mask = np.isin(test.column("item_id").to_numpy(), list(first_seen))
    new_items: dict[str, Any] = {"rows": int(new_mask.sum()), "items": len(first_seen),
                                 "items_scored": len(np.unique(
                                     test.column("item_id").to_numpy()[new_mask]))}
    y = labels[new_mask]
    full = {"value": auc(y, online[new_mask]),
            "ci95": list(bootstrap_auc(y, online[new_mask], n_resamples=n_resamples, seed=seed)),
            "scores": "online (the served model through the service)"}
    new_items["auc"] = {"full": full}
    if base is not None:
        new_items["auc"]["base"] = {
            "value": auc(y, base[new_mask]),
            "ci95": list(bootstrap_auc(y, base[new_mask], n_resamples=n_resamples, seed=seed)),
            "scores": "offline predictions of the base variant (same rows)"}
        if y.size and y.min() != y.max():
            d, lo, hi = paired_bootstrap_diff(y, online[new_mask], base[new_mask],
                                              n_resamples=n_resamples, seed=seed)
            new_items["auc"]["full_minus_base"] = {"value": d, "ci95": [lo, hi]}
    return {
        "online_auc": online_auc,
        "offline_auc": offline_auc,
        "skew_auc": online_auc - offline_auc,
        "rows": int(test.num_rows),
        "rows_in_test_split": plan.test_rows_total,
        "rows_selected_before_cap": plan.selected_rows,
        "capped": plan.selected_rows > test.num_rows,
        "rows_score_diff_gt_1e-4": int(differing.size),
        "max_abs_score_diff": float(diff.max()) if diff.size else 0.0,
        "score_diff_reasons": reasons,
        "differing_rows": listed,
        "by_bucket": {"online": auc_by_bucket(labels, online, buckets, bucket_labels),
                      "offline": auc_by_bucket(labels, offline, buckets, bucket_labels),
                      "rows": {name: int((buckets == b).sum())
                               for b, name in enumerate(bucket_labels)}},
        "new_items": new_items,
        "start": plan.start.isoformat(),
        "periods": len(plan.steps),
        "warm_items": int(plan.warm_items.size),
    }


def feature_differences(row: dict[str, Any], sequence: Any, items: dict[int, dict[str, Any]],
                        trained: dict[int, dict[str, Any]], *, rtol: float = 1e-6) -> str:
    """The features of one test row that the online store gave otherwise than the training
    row (``row``, TRAINING_SAMPLES) and the training items table (``trained``: item_id -> its
    embedding and semantic ids) hold, for the candidate and, when the sequence is the same, for
    each sequence item: "" when every one checked is equal. Semantic ids are two findings:
    "semantic codes" (one of the L codes, which MBA reads) and "disambiguation index" (only the
    last id, which keeps ids unique and which no ranker reads). ``sequence`` and ``items`` are
    what ``feature_repo.online.online_features`` read at the row's turn."""
    def close(a: Any, b: Any) -> bool:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * np.maximum(1, np.abs(b))))

    def content(item_ids: list[int], prefix: str) -> list[str]:
        known = [i for i in item_ids if i in trained]
        online_ids = [list(items[i]["semantic_ids"]) for i in known]
        trained_ids = [list(trained[i]["semantic_ids"]) for i in known]
        out = []
        if not close([items[i]["embedding"] for i in known],
                     [trained[i]["embedding"] for i in known]):
            out.append(prefix + "embedding")
        if [ids[:-1] for ids in online_ids] != [ids[:-1] for ids in trained_ids]:
            out.append(prefix + "semantic codes")
        elif online_ids != trained_ids:  # the last id only: no ranker reads it (MBA: L codes)
            out.append(prefix + "disambiguation index")
        return out

    found = []
    item = items[int(row["item_id"])]
    if not close([item[n] for n in ITEM_STAT_NUMERIC], [row[n] for n in ITEM_STAT_NUMERIC]):
        found.append("item_stats")
    if int(item["pv_bucket"]) != int(row["pv_bucket"]):
        found.append("pv_bucket")
    found += content([int(row["item_id"])], "")
    seq = [int(i) for i in sequence.item_ids]
    if seq != [int(i) for i in row["seq_item_ids"]]:
        found.append("sequence")
    else:
        real = [i for i in seq if i != PADDING_ITEM_ID]
        online = [[items[i][n] for i in real] for n in ITEM_STAT_NUMERIC]
        offline = [[v for i, v in zip(seq, row[SEQ_STAT_PREFIX + n], strict=True)
                    if i != PADDING_ITEM_ID] for n in ITEM_STAT_NUMERIC]
        buckets = [b for i, b in zip(seq, row[SEQ_STAT_PREFIX + "pv_bucket"], strict=True)
                   if i != PADDING_ITEM_ID]
        if not close(online, offline) or [int(items[i]["pv_bucket"]) for i in real] != buckets:
            found.append("sequence item_stats")
        found += content(real, "sequence ")
    if sequence.stats is None or not close(sequence.stats, [row[n] for n in USER_STAT_NUMERIC]):
        found.append("user_stats")
    return ", ".join(found)


# --- the live system ---------------------------------------------------------------------------
def served_model(folder: Path) -> tuple[str, int]:
    """(variant, seed) of the exported model in ``folder`` (what the service loads)."""
    meta = ExportFiles(folder).meta
    if not meta.is_file():
        raise FileNotFoundError(f"no exported model at {folder} ({meta.name} missing): run "
                                "`saviorrec export` first")
    info = json.loads(meta.read_text())
    return str(info["variant"]), int(info["seed"])


def read_predictions(lake: Lake, variant: str, seed: int, test: pa.Table) -> np.ndarray:
    """A ranker's test predictions, checked row by row against the test split's order."""
    path = lake.ranker(variant, seed).predictions
    preds = read_table(path, PREDICTIONS)
    if preds.num_rows != test.num_rows:
        raise ValueError(f"{path}: {preds.num_rows} rows, the test split "
                         f"{lake.training('test')} has {test.num_rows}")
    for column in ("user_id", "item_id", "label"):
        a, b = preds.column(column).to_numpy(), test.column(column).to_numpy()
        bad = np.flatnonzero(a != b)
        if bad.size:
            raise ValueError(f"{path}: row {bad[0]} column {column} is {a[bad[0]]}, the test "
                             f"split has {b[bad[0]]}: predictions of another test set")
    return preds.column("score").to_numpy().astype(np.float32)


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink() if not link.is_dir() or link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(target.resolve())


def build_world(cfg: Config, plan: ReplayPlan, work: Path, port: int,
                model: Path, *, online_store: str = "sqlite") -> tuple[Config, Path]:
    """The replay's own run folder ``work``: the run as it stood at the start, seen by the
    live system (``work`` is new or empty). Items and their multimodal rows of the warm items only (so that onboarding
    adds the new ones), the run's models, export, Spark outputs and tower cache linked, a fresh
    Feast store holding the warm items' multimodal rows and the users' sequence rows as of the
    start: ``online_store`` sqlite (the local profile) or redis (the production profile, over
    the empty Redis that ``$feast.redis_env`` names: :func:`private_redis`). Returns (config,
    its file)."""
    if online_store not in ONLINE_STORES:
        raise ValueError(f"online_store {online_store!r}: one of {ONLINE_STORES}")
    from feature_repo.store import apply, get_store

    run = Lake.from_config(cfg)
    world_cfg = cfg.with_overrides(
        run={"root": str(work.resolve()), "name": f"{cfg.run.name}-replay"},
        feast={"profile": "local" if online_store == "sqlite" else "production"},
        serving={"item_cache_ttl_s": 0.0, "host": "127.0.0.1", "port": port,
                 "model_dir": str(model.resolve())},
        onboard={"in_service": True})
    lake = Lake.from_config(world_cfg)
    warm = pa.array(plan.warm_items, pa.int64())
    items = read_table(run.items, ITEMS)
    write_table(items.filter(pc.is_in(items.column("item_id"), warm)), lake.items, ITEMS)
    multimodal = read_table(run.item_multimodal, ITEM_MULTIMODAL)
    write_table(multimodal.filter(pc.is_in(multimodal.column("item_id"), warm)),
                lake.item_multimodal, ITEM_MULTIMODAL)
    for name in ("item_stats", "sequences"):
        _link(run.spark(name), lake.spark(name))
    _link(run.encoder_dir, lake.encoder_dir)
    _link(run.rqvae_dir, lake.rqvae_dir)
    _link(run.cache, lake.cache)
    config_file = lake.root / "config.yaml"
    config_file.write_text(dump_config(world_cfg))
    apply(world_cfg)
    store = get_store(world_cfg)
    end = plan.start
    store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end,
                      feature_views=["user_sequence"])
    store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=datetime.now(UTC),
                      feature_views=["item_multimodal"])
    return world_cfg, config_file


@contextmanager
def private_redis(cfg: Config, work: Path) -> Iterator[str]:
    """A redis-server of the replay's own (loopback, a free port, no persistence, its files in
    ``work``), named in ``$feast.redis_env`` for this process and the ones it starts, so that
    the replay never writes to another store. Yields its URL; stopped on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("the replay over Redis needs redis-server on PATH "
                                "(apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    work.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, env = f"redis://127.0.0.1:{port}/0", cfg.feast.redis_env
    before = os.environ.get(env)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        os.environ[env] = url
        yield url
    finally:
        if before is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = before
        process.terminate()
        process.wait(10)


class LiveSystem:
    """``saviorrec stream item-stats`` and ``saviorrec serve`` over the replay's run, as the
    production processes (each its own process group, stopped with SIGTERM then SIGKILL).

    Waits, each failing with a TimeoutError that names what it waited for: the service's
    /readyz and each HTTP answer (``replay.timeout_s``), the stream's commit of one event file
    (``replay.batch_timeout_s``)."""

    POLL_S = 0.05  # a committed batch is seen within this

    def __init__(self, cfg: Config, config_file: Path) -> None:
        self.cfg, self.config_file = cfg, config_file
        self.lake = Lake.from_config(cfg)
        self.url = f"http://127.0.0.1:{cfg.serving.port}"
        self.files_fed = 0
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Self:
        logs = self.lake.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.lake.event_inbox.mkdir(parents=True, exist_ok=True)
        for name, args in (("stream", ["stream", "item-stats"]), ("serve", ["serve"])):
            with open(logs / f"{name}.log", "wb") as log_file:  # the child keeps its own copy
                self.processes.append((name, subprocess.Popen(
                    [sys.executable, "-m", "saviorrec.cli", *args, "--config",
                     str(self.config_file)],
                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)))
        try:
            self._wait(lambda: self._get("/readyz") == 200, "the service's /readyz",
                       self.cfg.replay.timeout_s, "replay.timeout_s")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def _wait(self, done: Any, what: str, timeout_s: float, setting: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            for name, process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} process exited ({process.returncode}) while "
                                       f"waiting for {what}: see {self.lake.root / 'logs'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not after {timeout_s:g} s ({setting}); see "
                                   f"{self.lake.root / 'logs'}")
            time.sleep(self.POLL_S)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        timeout_s = self.cfg.replay.timeout_s
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path} answered {e.code}: {e.read()[:500]!r}") from None
        except TimeoutError:
            raise TimeoutError(f"POST {path}: no answer after {timeout_s:g} s "
                               f"(replay.timeout_s); see {self.lake.root / 'logs'}") from None

    def feed(self, events: pa.Table) -> None:
        """Drop one event file in the inbox (written aside, then renamed) and wait until the
        stream has committed it: one file per micro-batch, so batch id = files fed - 1."""
        if events.num_rows == 0:
            return
        final = self.lake.event_inbox / f"events-{self.files_fed:06d}.parquet"
        tmp = final.with_name("." + final.name)
        pq.write_table(events, tmp, coerce_timestamps="us")
        os.replace(tmp, final)
        batch = self.files_fed
        self.files_fed += 1
        progress = self.lake.item_stats_stream.progress

        def committed() -> bool:
            if not progress.exists():
                return False
            try:
                return int(json.loads(progress.read_text())["batch_id"]) >= batch
            except (ValueError, KeyError):
                return False
        self._wait(committed, f"the stream's micro-batch {batch} ({final.name}, "
                   f"{events.num_rows} events) to commit", self.cfg.replay.batch_timeout_s,
                   "replay.batch_timeout_s")

    def onboard(self, items: pa.Table) -> dict[str, Any]:
        """POST /items of catalogue rows, every content field the batch encoder read."""
        records = [{"item_id": r["item_id"], "title": r["title"], "genres": r["genres"],
                    "tags": r["tags"], "overview": r["overview"], "poster_path": r["image_path"]}
                   for r in items.to_pylist()]
        return self._post("/items", {"items": [{k: v for k, v in r.items() if v is not None}
                                               for r in records]})

    def rank(self, user_id: int, item_ids: list[int]) -> dict[int, float]:
        """item_id -> score of one user's candidates, in one POST /rank (ids made unique)."""
        answer = self._post("/rank", {"user_id": user_id, "item_ids": list(dict.fromkeys(item_ids))})
        return {int(r["item_id"]): float(r["score"]) for r in answer["items"]}


def _plain(value: Any) -> Any:
    """json.dumps' fallback for numpy values left in a result."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def user_rows_frame(rows: list[dict[str, Any]]) -> Any:
    """Training rows' user sequences and statistics as user_sequence rows (one per row; the
    ``per_row`` mode: what a right user-feature stream would hold at the row's time)."""
    import pandas as pd

    return pd.DataFrame([{
        "user_id": int(row["user_id"]),
        "event_timestamp": pd.Timestamp(row["event_timestamp"]),
        "seq_item_ids": [int(i) for i in row["seq_item_ids"]], "seq_len": int(row["seq_len"]),
        **{n: (float(row[n]) if SEQUENCES.column(n).dtype.startswith("float")
               else round(float(row[n]))) for n in USER_STAT_NUMERIC}} for row in rows])


def user_row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What the per_row mode writes for a test row: rows of one user with equal keys are
    scored together."""
    return (tuple(int(i) for i in row["seq_item_ids"]), int(row["seq_len"]),
            *(float(row[n]) for n in USER_STAT_NUMERIC))


def rounds(keys: list[tuple[int, Any]]) -> list[dict[int, list[int]]]:
    """The requests of one step: ``keys[j]`` = (user_id, user row key) of the step's j-th test
    row, in time order. Round r maps each user to the rows of its r-th distinct user row, so a
    round is one write of user rows (at most one per user) and then one POST /rank per user."""
    out: list[dict[int, list[int]]] = []
    seen: dict[int, dict[Any, int]] = {}  # user -> user row key -> its round
    for j, (user, key) in enumerate(keys):
        mine = seen.setdefault(user, {})
        r = mine.setdefault(key, len(mine))
        if r == len(out):
            out.append({})
        out[r].setdefault(user, []).append(j)
    return out


@dataclass
class Scored:
    """One mode's online scores and the features the store gave otherwise (per plan.test row)."""

    online: np.ndarray
    differences: list[str]
    requests: int = 0

    @classmethod
    def empty(cls, rows: int) -> Scored:
        return cls(np.full(rows, np.nan, np.float32), [""] * rows)


MODE_FIGURES = ("online_auc", "offline_auc", "skew_auc", "rows", "rows_score_diff_gt_1e-4",
                "max_abs_score_diff", "score_diff_reasons", "new_items", "rank_requests")


def replay(cfg: Config, model: Path, *, max_test_rows: int | None = None,
           port: int | None = None, rows: str = "first", online_store: str = "sqlite",
           user_features: tuple[str, ...] = USER_FEATURES) -> dict[str, Any]:
    """The modes of ``user_features`` (per_row among them) in one pass: the ``replay`` result
    is the per_row mode's, with each other mode's figures under ``user_features_<mode>``
    (as_of_start's skew also as ``skew_auc``; the stream's listed rows as
    ``user_features_stream.differing_rows``)."""
    if "per_row" not in user_features:
        raise ValueError(f"user_features {user_features!r}: per_row gives the replay's own "
                         "figures and must be one of them")
    results = run_replay(cfg, model, max_test_rows=max_test_rows, port=port, rows=rows,
                         online_store=online_store, user_features=user_features)
    result = results["per_row"]
    result["online_minus_offline_auc"] = result["online_auc"] - result["offline_auc"]
    if "as_of_start" in results:
        result["skew_auc"] = results["as_of_start"]["skew_auc"]
    for mode, other in results.items():
        if mode != "per_row":
            result[f"user_features_{mode}"] = {k: other[k] for k in MODE_FIGURES}
    if "stream" in results:
        result["user_features_stream"]["differing_rows"] = results["stream"]["differing_rows"]
    return json.loads(json.dumps(result, default=_plain))


def replay_entry(previous: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """The results file's ``replay`` key after ``result`` (of :func:`replay`), given the one
    there before. A ``--rows new_items`` run fills ``new_items`` only (with its whole result
    under ``run``); a ``first`` run replaces the rest, and its own ``new_items`` too unless it
    was capped and a new_items run had measured every new-item row."""
    previous = dict(previous or {})
    if result["rows_selected"] == "new_items":
        return {**previous, "new_items": {**result["new_items"], "run": result}}
    kept = previous.get("new_items", {})
    if result["capped"] and kept.get("run", {}).get("rows_selected") == "new_items":
        return {**result, "new_items": kept}
    return result


def run_replay(cfg: Config, model: Path, *, max_test_rows: int | None = None,
               work: Path | None = None, port: int | None = None,
               user_features: tuple[str, ...] = USER_FEATURES,
               rows: str = "first", online_store: str = "sqlite") -> dict[str, dict[str, Any]]:
    """Replay a finished run through the live system (``model``: the export folder the service
    serves, ``serving.service.model_dir``) once, scoring each test row in every mode of
    ``user_features`` (USER_FEATURES); return mode -> result.

    Per step: onboard, feed, then the modes in turn. The store holds the stream's user rows:
    stream scores against them between its feeds (one POST /rank per user and feed);
    as_of_start puts in the step's users' rows as of the start (snapshotted before anything is
    fed), scores (one POST /rank per user of the step: its rows share every feature) and puts
    the stream's back; per_row takes a snapshot of the step's users' rows, writes each distinct
    training user row (one write per round of :func:`rounds`) and scores its rows (one POST
    /rank per user and round), then puts the snapshot back."""
    unknown = set(user_features) - set(USER_FEATURES)
    if unknown or not user_features:
        raise ValueError(f"user_features {user_features!r}: some of {USER_FEATURES}")
    if online_store not in ONLINE_STORES:
        raise ValueError(f"online_store {online_store!r}: one of {ONLINE_STORES}")
    began = time.perf_counter()
    lake = Lake.from_config(cfg)
    cap = cfg.replay.max_test_rows if max_test_rows is None else max_test_rows
    variant, seed = served_model(model)
    samples = read_table(lake.spark("samples"), SAMPLES)
    # With every position's statistics resolved (seq_<stat>): the rows the checks compare.
    test = expand(read_table(lake.training("test"), TRAINING_SAMPLES),
                  read_table(lake.training_stats, TRAINING_STATS))
    offline_all = read_predictions(lake, variant, seed, test)
    base_path = lake.ranker("base", seed).predictions
    base_all = read_predictions(lake, "base", seed, test) if base_path.exists() else None
    plan = plan_replay(samples, test, period_seconds=cfg.stats.snapshot_seconds,
                       max_test_rows=cap, rows=rows, user_cuts="stream" in user_features)
    work = work or lake.replay_dir
    if work.exists():
        shutil.rmtree(work)
    with ExitStack() as stack:
        if online_store == "redis":
            stack.enter_context(private_redis(cfg, work / "redis"))
        return _replay_in_world(
            cfg, plan, build_world(cfg, plan, work, port or cfg.serving.port, model,
                                          online_store=online_store),
            test=test, offline_all=offline_all, base_all=base_all, user_features=user_features,
            meta={"variant": variant, "seed": seed, "max_test_rows": cap, "rows_selected": rows,
                  "online_store": online_store, "run": str(lake.root)}, began=began)


def _replay_in_world(cfg: Config, plan: ReplayPlan, world: tuple[Config, Path], *,
                     test: pa.Table, offline_all: np.ndarray, base_all: np.ndarray | None,
                     user_features: tuple[str, ...], meta: dict[str, Any],
                     began: float) -> dict[str, dict[str, Any]]:
    """run_replay's live part, in the world that build_world made."""
    from feature_repo.online import online_features
    from feature_repo.push import OnlineSnapshot
    from feature_repo.stream_sink import sink_store

    world_cfg, config_file = world
    lake = Lake.from_config(cfg)
    positions = plan.test.column("row").to_numpy()  # in the test split
    trained = read_table(lake.training_items, TRAINING_ITEMS).to_pylist()
    trained_items = {int(r["item_id"]): r for r in trained}
    catalogue = read_table(lake.items, ITEMS)
    log.info("replay from %s: %d warm items, %d periods, %d test rows (of %d)", plan.start,
             plan.warm_items.size, len(plan.steps), plan.test.num_rows, plan.test_rows_total)
    scored = {mode: Scored.empty(plan.test.num_rows) for mode in user_features}
    onboarded: list[int] = []
    # writes user rows whatever their timestamp (Redis keeps only newer rows otherwise)
    store = sink_store(world_cfg)
    stream_s = 0.0

    def score(live: LiveSystem, mode: str, step_rows: list[dict[str, Any]],
              ks: np.ndarray, round_: dict[int, list[int]]) -> None:
        out = scored[mode]
        for user, js in round_.items():
            items = [int(step_rows[j]["item_id"]) for j in js]
            scores = live.rank(user, items)
            out.requests += 1
            seen = online_features(store, user, list(dict.fromkeys(items)))
            for j in js:
                row, k = step_rows[j], ks[j]
                out.online[k] = scores[int(row["item_id"])]
                out.differences[k] = feature_differences(row, seen.sequence, seen.items,
                                                         trained_items)

    def step_users(step: Step) -> list[int]:
        return sorted({int(u) for u in plan.test.column("user_id").to_numpy()[step.test_rows]})

    # The stream writes user rows too: as_of_start puts the start's rows back for its turn.
    at_start = {n: OnlineSnapshot.take(store, step_users(step), ("user_sequence",))
                for n, step in enumerate(plan.steps)} if "as_of_start" in scored else {}
    with LiveSystem(world_cfg, config_file) as live:
        def feed(events: pa.Table | None) -> None:
            nonlocal stream_s
            fed = time.perf_counter()
            if events is not None:
                live.feed(events)
            stream_s += time.perf_counter() - fed

        live.feed(plan.before)
        for n, step in enumerate(plan.steps):
            if step.new_items:
                new = catalogue.filter(pc.is_in(catalogue.column("item_id"),
                                                pa.array(step.new_items, pa.int64())))
                onboarded += live.onboard(new)["added"]
            feed(step.events)
            ks = step.test_rows
            step_rows = test.take(pa.array(positions[ks])).to_pylist()
            if "stream" in scored:  # the stream's own user rows, cut at each row's time
                for k, stream_ks in enumerate(step.stream_rows):
                    if k:
                        feed(step.stream_feeds[k - 1])
                    js = np.searchsorted(ks, stream_ks)
                    for round_ in rounds([(int(step_rows[j]["user_id"]), None) for j in js]):
                        score(live, "stream", step_rows, ks,
                              {u: [int(js[i]) for i in idx] for u, idx in round_.items()})
            feed(step.tail)
            if "as_of_start" in scored:
                current = OnlineSnapshot.take(store, step_users(step), ("user_sequence",))
                at_start[n].restore()
                try:
                    for round_ in rounds([(int(r["user_id"]), None) for r in step_rows]):
                        score(live, "as_of_start", step_rows, ks, round_)
                finally:
                    current.restore()
            if "per_row" in scored:
                users = sorted({int(r["user_id"]) for r in step_rows})
                snapshot = OnlineSnapshot.take(store, users, ("user_sequence",))
                try:
                    for round_ in rounds([(int(r["user_id"]), user_row_key(r))
                                          for r in step_rows]):
                        store.write_to_online_store("user_sequence", user_rows_frame(
                            [step_rows[js[0]] for js in round_.values()]))
                        score(live, "per_row", step_rows, ks, round_)
                finally:
                    snapshot.restore()
            if (n + 1) % 10 == 0 or n + 1 == len(plan.steps):
                log.info("replay: step %d of %d (%s), %.0f s", n + 1, len(plan.steps),
                         datetime.fromtimestamp(step.period * cfg.stats.snapshot_seconds, UTC)
                         .date(), time.perf_counter() - began)
    seconds = round(time.perf_counter() - began, 1)
    results = {}
    for mode, out in scored.items():
        result = compare(plan, out.online, offline_all[positions],
                         None if base_all is None else base_all[positions],
                         cfg.stats.bucket_labels(), out.differences)
        result.update({**meta, "user_features": mode, "items_onboarded": len(onboarded),
                       "events_replayed": events_fed(plan),
                       "stream_files": stream_files(plan),
                       "steps_stream_clock_behind": sum(s.clock_behind for s in plan.steps),
                       "rank_requests": out.requests, "stream_wait_s": round(stream_s, 1),
                       "seconds": seconds, "modes_in_one_pass": list(scored)})
        results[mode] = result
    return results
