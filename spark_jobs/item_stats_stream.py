"""Fresh item statistics and user rows from a stream of event files: Spark Structured Streaming.

The live counterpart of the batch job (``spark_jobs/item_stats.py``), with its point-in-time
rule and its cadence (``stats.snapshot_cadence``): a row stamped P (the start of a UTC period)
counts the events strictly before P. A file source watches a folder of event files
(``Lake.event_inbox``: parquet in the ``schema.EVENTS`` layout, each dropped whole); every
micro-batch (``foreachBatch``) then

1. checks each new file: its schema against EVENTS (column names and types), then its rows
   (no null field, item_id >= 1, rating within ``data.rating_min .. rating_max``). A file that
   fails is *quarantined*: moved to ``StreamFiles.quarantine`` with a ``<name>.reason.json``
   (file, check, first bad row), counted in ``StreamFiles.bad_files`` and logged; its events
   count nowhere. A file is the unit: one bad row stops the whole file, never half of it;
2. adds the good events' (item_id, period, pv, clicks) to the job's state: one parquet folder
   per batch id under ``StreamFiles.counts``, written once, atomically (``batch-<id>``);
3. takes the stream's clock, the snapshot P: the start of the period of the latest event seen
   (event time, so that a replay reproduces the batch job at every instant), and computes, for
   every item whose row as of P changed in this batch, the batch job's row as of P: the latest
   batch row stamped <= P, timestamp included (:func:`rows_as_of`);
4. hands those rows to the sink (``FeatureStore.push`` to the online store:
   ``feature_repo.stream_sink``), then moves the bad files and writes ``StreamFiles.progress``.

Exactly once, through kill -9. Spark records which files make batch N before it runs it and
that N finished only after ``foreachBatch`` returns; after a crash it runs N again on the same
files. Every step above gives the same result the second time: the counts of N are kept if
already written (the same files give the same counts), state is read only up to N, the pushed
rows are full values (not increments) so a repeated push writes the same values, and a bad file
already moved is recognised in the quarantine. Nothing is counted twice or lost.

Rows changed by batch N with snapshot P_N (previous P_{N-1}): items with a new event before
P_N (late events included), and, when the clock moved, items with events in periods
[P_{N-1} - W, P_N) (their pv grows, or events enter or leave the W-period recent window).
A late event (older than P) corrects its item's row with the same timestamp as before: the sink
must overwrite (Redis: ``skip_dedup``), as the batch job would have counted it too.

**User rows** (the ``user_sequence`` view, issue 28): the same micro-batch also keeps every
user's row what the batch job (``spark_jobs/sequences.py``) gives as its *serving row* over the
events seen so far: stamped 1 s after the user's last event, it holds the user's last
``sequences.max_len`` clicks (oldest first, clicks at one timestamp ordered by item id,
left-padded), user_pv / user_clicks (every event and click) and user_ctr (smoothed with
``stats.ctr_prior*``). Unlike item statistics they have no clock: a user's row follows their own
events only, exact to the event, as the batch rows are. Per batch N (step 2b, after the counts):

- the state of each user with events in N is written once, atomically, to
  ``StreamFiles.users/batch-<N>``: pv, clicks, the last event's time and the last N clicks as
  (time, item) pairs, from the user's state in the latest earlier folder and N's events
  (:func:`user_states`). Bounded: the last N clicks and three numbers per user, never the whole
  history. Exact for late events too: the last N of all clicks are the last N of (the last N of
  the earlier ones and the new ones), in (time, item) order;
- their rows (:func:`user_rows`) are pushed to the user sink (full values, timestamp included).

Why in this job's micro-batch, not a second query on the inbox: one read of each file, one set of
checks and one quarantine (a bad file counts for neither, never for one and not the other), one
checkpoint, so both kinds of rows are always as of the same files; a replay that waits for a
batch's commit then knows both are written. A repeated batch N keeps its folder and pushes the
same rows again, as for items. ``user_sink`` None leaves user rows out (the job's
item-statistics tests).

    saviorrec stream item-stats --config C [--available-now]
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from saviorrec.config import Config
from saviorrec.lake import Lake, StreamFiles, atomic_path
from saviorrec.schema import EVENTS, ITEM_STATS, SEQUENCES
from spark_jobs.columns import smoothed_ctr
from spark_jobs.item_stats import period_counts, with_rates
from spark_jobs.samples import with_label
from spark_jobs.sequences import left_padded, serving_time
from spark_jobs.tables import conform

log = logging.getLogger(__name__)

# A sink takes ITEM_STATS rows (the user sink: SEQUENCES rows), pandas with UTC timestamps, and
# writes them; it must overwrite.
Sink = Callable[[pd.DataFrame], None]

COUNTS_DDL = "batch_id BIGINT, item_id BIGINT, period BIGINT, pv BIGINT, clicks BIGINT"
CLICK_DDL = "STRUCT<event_timestamp: TIMESTAMP, item_id: BIGINT>"
USERS_DDL = (f"batch_id BIGINT, user_id BIGINT, pv BIGINT, clicks BIGINT, last_event TIMESTAMP, "
             f"recent ARRAY<{CLICK_DDL}>")
USER_EVENTS_DDL = "user_id BIGINT, item_id BIGINT, label BIGINT, event_timestamp TIMESTAMP"
BATCH_PREFIX = "batch-"
REASON_SUFFIX = ".reason.json"
FILE_COLUMN = "_file"
QUERY_NAME = "item_stats_stream"
# The file source forgets files older than maxFileAge (default 7 days) relative to the newest:
# an event file copied with an old modification time would be skipped silently.
MAX_FILE_AGE = "36500d"
# Spark's binaryFile layout; the stream selects only ``path`` (each file is then read by Spark
# with the EVENTS schema), so file contents never travel through the source.
BINARY_FILE_DDL = "path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY"


# --- pure transforms ---------------------------------------------------------------------------
def bad_row_reason(rating_min: float, rating_max: float) -> Column:
    """The first failed check of an event row (null for a good row)."""
    reason = F.when(F.col("user_id").isNull(), "null user_id")
    for column in ("item_id", "rating", "event_timestamp"):
        reason = reason.when(F.col(column).isNull(), f"null {column}")
    return (
        reason.when(F.col("item_id") < 1, "item_id < 1")
        .when((F.col("rating") < rating_min) | (F.col("rating") > rating_max),
              f"rating outside [{rating_min}, {rating_max}]")
    )


def rows_as_of(counts: DataFrame, snapshot: int, window_periods: int) -> DataFrame:
    """(item_id, period, pv, clicks, pv_recent, clicks_recent) as of snapshot period P.

    The batch job's row of each item as of P is its latest row stamped <= P. Its rows stand at
    p+1 and p+W+1 for every period p with events, so that row is at the largest of those <= P:
    max over p < P of (p+W+1 if p+W+1 <= P else p+1); its counts are those of all periods < P
    (all) and of P-W <= p < P (recent), since no value changes between it and P. Items with no
    event before P have no row.
    """
    w, p = window_periods, F.col("period")
    recent = p >= F.lit(snapshot - w)
    row_period = F.when(p + w + 1 <= snapshot, p + w + 1).otherwise(p + 1)
    zero = F.lit(0).cast("bigint")
    return (
        counts.filter(p < snapshot)
        .groupBy("item_id")
        .agg(
            F.max(row_period).alias("period"),
            F.sum("pv").alias("pv"),
            F.sum("clicks").alias("clicks"),
            F.sum(F.when(recent, F.col("pv")).otherwise(zero)).alias("pv_recent"),
            F.sum(F.when(recent, F.col("clicks")).otherwise(zero)).alias("clicks_recent"),
        )
    )


def changed_items(state: DataFrame, batch_id: int, snapshot: int, previous: int | None,
                  window_periods: int) -> DataFrame:
    """Items whose row as of ``snapshot`` may differ from their row after the batch before.

    New events of this batch before the snapshot; and, when the snapshot moved from
    ``previous``, every item with events in [previous - W, snapshot) (none before: all).
    """
    p = F.col("period")
    new = (F.col("batch_id") == batch_id) & (p < snapshot)
    if previous is None:
        moved = p < snapshot
    elif snapshot > previous:
        moved = (p >= previous - window_periods) & (p < snapshot)
    else:
        moved = F.lit(False)
    return state.filter(new | moved).select("item_id").distinct()


def user_states(events: DataFrame, earlier: DataFrame, max_len: int) -> DataFrame:
    """(user_id, pv, clicks, last_event, recent) after a batch, for each user with an event in it.

    ``events``: the batch's (user_id, item_id, label, event_timestamp); ``earlier``: USERS_DDL
    rows of the batches before (a user's state is their row of the highest batch id). ``recent``
    holds the last ``max_len`` clicks as (event_timestamp, item_id), in that order (the batch
    job's order: time, then item id)."""
    click = F.when(F.col("label") == 1, F.struct("event_timestamp", "item_id"))
    new = events.groupBy("user_id").agg(
        F.count(F.lit(1)).cast("bigint").alias("pv_new"),
        F.sum("label").cast("bigint").alias("clicks_new"),
        F.max("event_timestamp").alias("last_new"),
        F.collect_list(click).alias("recent_new"),  # nulls (non-clicks) are left out
    )
    fields = ("pv", "clicks", "last_event", "recent")
    latest = (earlier.join(new.select("user_id"), "user_id", "left_semi")
              .groupBy("user_id")
              .agg(F.max_by(F.struct(*fields), "batch_id").alias("s"))
              .select("user_id", *(F.col(f"s.{f}").alias(f) for f in fields)))
    zero, none = F.lit(0).cast("bigint"), F.array().cast(f"ARRAY<{CLICK_DDL}>")
    merged = F.array_sort(F.concat(F.coalesce("recent", none), "recent_new"))
    size = F.size(merged)
    return new.join(latest, "user_id", "left").select(
        "user_id",
        (F.coalesce("pv", zero) + F.col("pv_new")).alias("pv"),
        (F.coalesce("clicks", zero) + F.col("clicks_new")).alias("clicks"),
        F.greatest(F.coalesce("last_event", "last_new"), "last_new").alias("last_event"),
        F.when(size > max_len, F.slice(merged, size - max_len + 1, F.lit(max_len)))
        .otherwise(merged).alias("recent"),
    )


def user_rows(states: DataFrame, max_len: int, ctr_prior: float,
              ctr_prior_strength: float) -> DataFrame:
    """SEQUENCES rows of user states: the batch job's serving row over the events seen
    (stamped 1 s after the last, every click and event before it)."""
    seq_len = F.size("recent").cast("bigint")
    return states.select(
        "user_id",
        serving_time(F.col("last_event")).alias("event_timestamp"),
        left_padded(F.transform("recent", lambda c: c["item_id"]), seq_len, max_len)
        .alias("seq_item_ids"),
        seq_len.alias("seq_len"),
        F.col("pv").alias("user_pv"),
        F.col("clicks").alias("user_clicks"),
        smoothed_ctr(F.col("clicks"), F.col("pv"), ctr_prior, ctr_prior_strength)
        .alias("user_ctr"),
    )


# --- file checks ---------------------------------------------------------------------------------
def local_path(uri: str) -> Path:
    """A local path from Spark's ``file:`` URI (or a plain path)."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path(uri)


def schema_problem(path: Path) -> dict[str, Any] | None:
    """Why ``path`` is not a parquet file in the EVENTS layout (None when it is)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        return {"check": "unreadable", "detail": f"not a readable parquet file: {e}"}
    expected = EVENTS.arrow_schema()
    for field in expected:
        if field.name not in schema.names:
            return {"check": "schema", "detail": f"missing column {field.name!r} "
                    f"(has {schema.names})"}
        actual = schema.field(field.name).type
        if actual != field.type:
            return {"check": "schema", "detail": f"column {field.name!r} has type {actual}, "
                    f"expected {field.type}"}
    return None


@dataclass
class BatchFiles:
    """The files of one micro-batch, sorted into good and bad (with why)."""

    good: list[Path]
    bad: dict[Path, dict[str, Any]]  # path in the inbox -> reason
    already_quarantined: list[Path]  # moved by an earlier attempt of the same batch


# --- the job -------------------------------------------------------------------------------------
class ItemStatsStream:
    """The ``foreachBatch`` function of the query, and its files."""

    def __init__(self, spark: SparkSession, cfg: Config, sink: Sink,
                 files: StreamFiles | None = None, user_sink: Sink | None = None) -> None:
        self.spark, self.cfg, self.sink, self.user_sink = spark, cfg, sink, user_sink
        self.files = files or Lake.from_config(cfg).item_stats_stream
        self.period_seconds = cfg.stats.snapshot_seconds
        self.window = cfg.stats.recent_window_periods

    # paths of this batch's state and quarantine
    def counts_path(self, batch_id: int) -> Path:
        return self.files.counts / f"{BATCH_PREFIX}{batch_id:012d}"

    def users_path(self, batch_id: int) -> Path:
        return self.files.users / f"{BATCH_PREFIX}{batch_id:012d}"

    def quarantined(self, batch_id: int, path: Path) -> Path:
        return self.files.quarantine / f"{batch_id:012d}-{path.name}"

    def classify(self, batch_id: int, paths: list[Path]) -> BatchFiles:
        good, bad, done = [], {}, []
        for path in paths:
            if not path.exists():
                if self.quarantined(batch_id, path).exists():
                    done.append(path)
                    continue
                raise FileNotFoundError(
                    f"event file {path} of micro-batch {batch_id} is gone: it was read into the "
                    "stream and then deleted (the stream cannot replay it after a restart)")
            problem = schema_problem(path)
            if problem is None:
                good.append(path)
            else:
                bad[path] = problem
        rows_bad = self.bad_rows(good)
        bad.update(rows_bad)
        return BatchFiles([p for p in good if p not in rows_bad], bad, done)

    def read_events(self, paths: list[Path]) -> DataFrame:
        return (self.spark.read.schema(EVENTS.spark_ddl()).parquet(*[str(p) for p in paths])
                .withColumn(FILE_COLUMN, F.input_file_name()))

    def bad_rows(self, paths: list[Path]) -> dict[Path, dict[str, Any]]:
        """Files among ``paths`` with a bad row, or whose data Spark cannot read."""
        if not paths:
            return {}
        data = self.cfg.data
        try:
            tagged = self.read_events(paths).withColumn(
                "bad_reason", bad_row_reason(data.rating_min, data.rating_max))
            found = (tagged.filter(F.col("bad_reason").isNotNull())
                     .groupBy(FILE_COLUMN)
                     .agg(F.count(F.lit(1)).alias("bad_rows"),
                          F.min_by(F.struct(*EVENTS.names, "bad_reason"),
                                   F.col("event_timestamp")).alias("first"))
                     .collect())
        except Exception as e:  # noqa: BLE001 - a file Spark cannot decode: find it alone
            if len(paths) == 1:
                return {paths[0]: {"check": "unreadable", "detail": f"{type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:300]}"}}
            out: dict[Path, dict[str, Any]] = {}
            for path in paths:
                out.update(self.bad_rows([path]))
            return out
        return {
            local_path(r[FILE_COLUMN]): {
                "check": "rows", "bad_rows": int(r["bad_rows"]),
                "detail": f"{r['first']['bad_reason']}: first bad row "
                          f"{ {n: str(r['first'][n]) for n in EVENTS.names} }",
            }
            for r in found
        }

    def write_counts(self, batch_id: int, good: list[Path]) -> int:
        """The good events' counts of this batch, written once (kept on a re-run)."""
        target = self.counts_path(batch_id)
        if target.exists():
            return -1  # written by an earlier attempt of this batch, from the same files
        if good:
            events = self.read_events(good).drop(FILE_COLUMN)
            counts = (events.transform(with_label, self.cfg.labels.click_threshold)
                      .transform(period_counts, self.period_seconds))
            n_events = events.count()
        else:
            counts, n_events = self.spark.createDataFrame([], COUNTS_DDL).drop("batch_id"), 0
        out = counts.select(F.lit(batch_id).cast("bigint").alias("batch_id"), "item_id",
                            "period", "pv", F.col("clicks").cast("bigint").alias("clicks"))
        with atomic_path(target) as tmp:
            out.coalesce(1).write.mode("error").parquet(str(tmp))
        return n_events

    def write_users(self, batch_id: int, good: list[Path]) -> bool:
        """The state of this batch's users after it, written once (kept on a re-run: it was
        made from the same files and the same earlier folders). False when kept."""
        target = self.users_path(batch_id)
        if target.exists():
            return False
        if good:
            events = (self.read_events(good).transform(with_label, self.cfg.labels.click_threshold)
                      .select("user_id", "item_id", "label", "event_timestamp"))
        else:
            events = self.spark.createDataFrame([], USER_EVENTS_DDL)
        states = user_states(events, self.user_state(batch_id - 1), self.cfg.sequences.max_len)
        out = states.select(F.lit(batch_id).cast("bigint").alias("batch_id"), "*")
        with atomic_path(target) as tmp:
            out.coalesce(1).write.mode("error").parquet(str(tmp))
        return True

    def _batch_folders(self, root: Path, ddl: str, batch_id: int) -> DataFrame:
        """The batch folders under ``root`` up to ``batch_id``, read with ``ddl`` (folders listed
        here: a glob would make Spark look for a streaming sink's metadata under it and log a
        stack trace)."""
        folders = sorted(str(p) for p in root.glob(f"{BATCH_PREFIX}*")
                         if int(p.name[len(BATCH_PREFIX):]) <= batch_id)
        if not folders:
            return self.spark.createDataFrame([], ddl)
        return self.spark.read.schema(ddl).parquet(*folders).filter(F.col("batch_id") <= batch_id)

    def user_state(self, batch_id: int) -> DataFrame:
        """The user folders of every batch up to ``batch_id`` (USERS_DDL; a user's current
        state is their row with the highest batch id)."""
        return self._batch_folders(self.files.users, USERS_DDL, batch_id)

    def user_rows(self, batch_id: int) -> pd.DataFrame:
        """SEQUENCES rows (pandas, UTC timestamps) of the users of this batch, from its folder."""
        stats, max_len = self.cfg.stats, self.cfg.sequences.max_len
        states = self.spark.read.schema(USERS_DDL).parquet(str(self.users_path(batch_id)))
        rows = conform(user_rows(states, max_len, stats.ctr_prior, stats.ctr_prior_strength),
                       SEQUENCES).toPandas()
        rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
        return rows

    def state(self, batch_id: int) -> DataFrame:
        """The counts of every batch up to ``batch_id`` (COUNTS_DDL)."""
        return self._batch_folders(self.files.counts, COUNTS_DDL, batch_id)

    def quarantine(self, batch_id: int, bad: dict[Path, dict[str, Any]]) -> None:
        self.files.quarantine.mkdir(parents=True, exist_ok=True)
        for path, reason in sorted(bad.items()):
            target = self.quarantined(batch_id, path)
            note = target.with_name(target.name + REASON_SUFFIX)
            with atomic_path(note) as tmp:
                tmp.write_text(json.dumps({"file": str(path), "batch_id": batch_id, **reason},
                                          indent=1, default=str))
            shutil.move(str(path), str(target))
            log.warning("item_stats stream: quarantined event file %s (%s: %s) -> %s",
                        path, reason["check"], reason["detail"], target)
        self.write_bad_files()

    def write_bad_files(self) -> dict[str, Any]:
        """Count the quarantine (so a repeated move never counts twice)."""
        notes = sorted(self.files.quarantine.glob(f"*{REASON_SUFFIX}")) \
            if self.files.quarantine.is_dir() else []
        reasons = [json.loads(n.read_text()) for n in notes]
        by_reason: dict[str, int] = {}
        for r in reasons:
            by_reason[r["check"]] = by_reason.get(r["check"], 0) + 1
        summary = {"files": len(reasons), "by_reason": by_reason,
                   "names": [Path(r["file"]).name for r in reasons]}
        with atomic_path(self.files.bad_files) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        return summary

    def snapshot_rows(self, state: DataFrame, batch_id: int) -> tuple[int | None, DataFrame | None]:
        """The snapshot period after this batch, and the rows it changed (ITEM_STATS)."""
        latest = state.groupBy((F.col("batch_id") == batch_id).alias("new")) \
            .agg(F.max("period").alias("period")).collect()
        by_new = {r["new"]: r["period"] for r in latest}
        previous = by_new.get(False)
        periods = [p for p in by_new.values() if p is not None]
        if not periods:
            return None, None
        snapshot = max(periods)
        items = changed_items(state, batch_id, snapshot, previous, self.window)
        stats = self.cfg.stats
        rows = (state.join(items, "item_id", "left_semi")
                .transform(rows_as_of, snapshot, self.window)
                .transform(with_rates, stats.ctr_prior, stats.ctr_prior_strength,
                           stats.pv_buckets, self.period_seconds))
        return snapshot, conform(rows, ITEM_STATS)

    def process(self, batch: DataFrame, batch_id: int) -> None:
        """One micro-batch (see the module docstring); safe to run again for the same id."""
        paths = sorted(local_path(r["path"]) for r in batch.select("path").collect())
        files = self.classify(batch_id, paths)
        n_events = self.write_counts(batch_id, files.good)
        if self.user_sink is not None:
            self.write_users(batch_id, files.good)
        snapshot, rows = self.snapshot_rows(self.state(batch_id), batch_id)
        pushed, users_pushed = 0, None
        if rows is not None:
            frame = rows.toPandas()
            frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
            if len(frame):
                self.sink(frame)
            pushed = len(frame)
        if self.user_sink is not None:
            user_frame = self.user_rows(batch_id)
            if len(user_frame):
                self.user_sink(user_frame)
            users_pushed = len(user_frame)
        if files.bad:
            self.quarantine(batch_id, files.bad)
        progress = {
            "batch_id": batch_id, "files": len(paths), "good_files": len(files.good),
            "bad_files": len(files.bad) + len(files.already_quarantined),
            "events": n_events if n_events >= 0 else None,
            "snapshot": None if snapshot is None else
            pd.Timestamp(snapshot * self.period_seconds, unit="s", tz="UTC").isoformat(),
            "rows_pushed": pushed,
            "user_rows_pushed": users_pushed,
        }
        with atomic_path(self.files.progress) as tmp:
            tmp.write_text(json.dumps(progress, indent=1))
        log.info("item_stats stream batch %d: %d files (%d bad), %s events, snapshot %s, "
                 "%d rows pushed, %s user rows", batch_id, len(paths), progress["bad_files"],
                 progress["events"], progress["snapshot"], pushed, users_pushed)


def start(spark: SparkSession, cfg: Config, sink: Sink, *, inbox: Path | None = None,
          files: StreamFiles | None = None, available_now: bool = False,
          user_sink: Sink | None = None) -> StreamingQuery:
    """Start the query over ``inbox`` (default ``Lake.event_inbox``) on its checkpoint;
    ``user_sink`` (SEQUENCES rows) also keeps user rows."""
    lake = Lake.from_config(cfg)
    inbox = Path(inbox or lake.event_inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    job = ItemStatsStream(spark, cfg, sink, files, user_sink)
    job.files.root.mkdir(parents=True, exist_ok=True)
    source = (spark.readStream.format("binaryFile").schema(BINARY_FILE_DDL)
              .option("maxFilesPerTrigger", cfg.stream.max_files_per_trigger)
              .option("maxFileAge", MAX_FILE_AGE)
              .load(str(inbox))
              .select("path"))
    writer = (source.writeStream.queryName(QUERY_NAME).foreachBatch(job.process)
              .option("checkpointLocation", str(job.files.checkpoint)))
    writer = (writer.trigger(availableNow=True) if available_now
              else writer.trigger(processingTime=f"{cfg.stream.trigger_seconds} seconds"))
    return writer.start()


def run(spark: SparkSession, cfg: Config, sink: Sink, *, inbox: Path | None = None,
        files: StreamFiles | None = None, available_now: bool = False,
        user_sink: Sink | None = None) -> dict[str, Any]:
    """Run the stream (until every file now in the inbox is done, with ``available_now``;
    else until stopped) and report the last batch and the quarantine."""
    query = start(spark, cfg, sink, inbox=inbox, files=files, available_now=available_now,
                  user_sink=user_sink)
    query.awaitTermination()
    stream_files = files or Lake.from_config(cfg).item_stats_stream
    progress = json.loads(stream_files.progress.read_text()) if stream_files.progress.exists() \
        else None
    bad = json.loads(stream_files.bad_files.read_text()) if stream_files.bad_files.exists() \
        else {"files": 0, "by_reason": {}, "names": []}
    return {"last_batch": progress, "quarantined": bad}

