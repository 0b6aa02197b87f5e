"""The training set's statistics table (TRAINING_STATS) and the rows that point into it.

A sample's sequence positions hold the row of TRAINING_STATS with that item's statistics as of
the sample time (``seq_stats_row``), not the statistics themselves: seven numbers of fifty
positions per sample were most of a sample's bytes and repeat the same few item_stats rows over
and over (issue 25). Both builders (``feature_repo.training``, ``spark_jobs.training_set``) number
the rows with :func:`stats_table`, so their outputs are equal row for row; the ranker gathers at
batch time (``tf_ranker.data.StatsLookup``); :func:`expand` gives back the per-position lists
(seq_<stat>) for checks and the replay.

Row 0 is the defaults (ITEM_STAT_DEFAULTS), read by padding positions and by items without a
row as of the sample time (none yet, or older than the view's TTL); row r >= 1 is the (r-1)-th
ITEM_STATS row in (item_id, event_timestamp) order.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saviorrec.schema import (
    ITEM_STAT_DEFAULTS,
    ITEM_STAT_NUMERIC,
    PADDING_ITEM_ID,
    SEQ_STAT_PREFIX,
    SEQ_STATS_ROW,
    TRAINING_STATS,
)

STATS: tuple[str, ...] = (*ITEM_STAT_NUMERIC, "pv_bucket")  # the columns a position points at
DEFAULTS_ROW = 0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the defaults row's timestamp


def stats_table(item_stats: pa.Table) -> pa.Table:
    """TRAINING_STATS of ITEM_STATS rows: the defaults row, then the rows in (item, time) order.

    Two rows of one item with the same timestamp would make "the latest row <= t" ambiguous (and
    the two builders' numbering with it): ValueError naming the first such pair.
    """
    order = pc.sort_indices(item_stats, [("item_id", "ascending"),
                                         ("event_timestamp", "ascending")])
    rows = item_stats.take(order)
    item = rows["item_id"].to_numpy()
    micros = rows["event_timestamp"].cast(pa.int64()).to_numpy()
    same = np.flatnonzero((item[1:] == item[:-1]) & (micros[1:] == micros[:-1]))
    if len(same):
        at = int(same[0])
        raise ValueError(f"item_stats has {len(same) + 1}+ rows sharing an (item_id, "
                         f"event_timestamp), e.g. item_id={item[at]} at "
                         f"{rows['event_timestamp'][at].as_py()} (re-run the item_stats job)")
    return pa.concat_tables([_defaults_row(), rows.select(TRAINING_STATS.names).cast(
        TRAINING_STATS.arrow_schema())]).combine_chunks()


def _defaults_row() -> pa.Table:
    """Row 0 of every statistics table."""
    return pa.table({"item_id": [PADDING_ITEM_ID], "event_timestamp": [EPOCH],
                     **{n: [ITEM_STAT_DEFAULTS[n]] for n in STATS}},
                    schema=TRAINING_STATS.arrow_schema())


def expand(samples: pa.Table, stats: pa.Table) -> pa.Table:
    """``samples`` (TRAINING_SAMPLES) with seq_<stat> lists resolved from seq_stats_row, each
    aligned with seq_item_ids: the statistics the ranker reads at every position."""
    rows = pa.chunked_array(samples[SEQ_STATS_ROW]).combine_chunks()
    index = pc.list_flatten(rows).to_numpy(zero_copy_only=False)
    if len(index) and (index.min() < 0 or index.max() >= stats.num_rows):
        bad = index[(index < 0) | (index >= stats.num_rows)][0]
        raise ValueError(f"{SEQ_STATS_ROW} {bad} is outside the statistics table's "
                         f"{stats.num_rows} rows (a training set and another's stats.parquet?)")
    offsets = pa.array(rows.offsets.to_numpy() - rows.offsets[0].as_py(), pa.int32())
    out = samples
    for n in STATS:
        values = stats[n].to_numpy()[index]
        out = out.append_column(SEQ_STAT_PREFIX + n, pa.ListArray.from_arrays(offsets,
                                                                               pa.array(values)))
    return out


class Compactor:
    """Training tables in the wide layout (seq_<stat> lists beside seq_item_ids, no
    seq_stats_row) -> the same rows pointing into one statistics table: a row per non-padding
    position, in the order the tables come (padding points at row 0). For training sets made
    outside the builders (test worlds, benchmarks), whose statistics are not item_stats rows.
    Feed the splits one at a time (:meth:`split`), then write :meth:`stats`."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.next_row = 1

    def split(self, table: pa.Table) -> pa.Table:
        ids = pa.chunked_array(table["seq_item_ids"]).combine_chunks()
        flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
        parent = pc.list_parent_indices(ids).to_numpy()
        real = np.flatnonzero(flat != PADDING_ITEM_ID)
        if self.next_row + len(real) > np.iinfo(np.int32).max:
            raise ValueError(f"{self.next_row + len(real)} statistics rows do not fit int32")
        rows = np.zeros(len(flat), np.int32)
        rows[real] = np.arange(self.next_row, self.next_row + len(real), dtype=np.int32)
        self.next_row += len(real)
        self.parts.append(pa.table({
            "item_id": pa.array(flat[real], pa.int64()),
            "event_timestamp": pc.take(table["event_timestamp"], pa.array(parent[real])),
            **{n: pa.array(pc.list_flatten(table[SEQ_STAT_PREFIX + n]).to_numpy(
                zero_copy_only=False)[real]) for n in STATS},
        }).select(TRAINING_STATS.names).cast(TRAINING_STATS.arrow_schema()))
        offsets = pa.array(ids.offsets.to_numpy() - ids.offsets[0].as_py(), pa.int32())
        return table.drop_columns([SEQ_STAT_PREFIX + n for n in STATS]).append_column(
            SEQ_STATS_ROW, pa.ListArray.from_arrays(offsets, pa.array(rows)))

    def stats(self) -> pa.Table:
        """TRAINING_STATS: the defaults row, then every split's positions."""
        return pa.concat_tables([_defaults_row(), *self.parts]).combine_chunks()


def compact(splits: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], pa.Table]:
    """:class:`Compactor` over ``splits`` in order: (the compact tables, the statistics)."""
    compactor = Compactor()
    out = {name: compactor.split(table) for name, table in splits.items()}
    return out, compactor.stats()
