"""The ranker's training set: point-in-time rows of every sample, in chunks.

Per chunk of ``feast.training_chunk_rows`` samples:
1. the candidate's item_stats as of the sample time (``get_historical_features``);
2. the behaviour sequence and the user's statistics joined on (user_id, event_timestamp) exactly
   from the source of the user_sequence view (a missing or duplicated row is an error: never a silently older sequence);
3. item_stats of every sequence item as of the same sample time (see sequence_stats.py): its
   row of the statistics table (seq_stats_row, aligned with seq_item_ids; padding and unknown
   items point at row 0, the defaults; saviorrec.training_stats numbers the rows);
4. eval_pv_bucket of the candidate from item_pv.
Rows are written per split; counts in == out are asserted. TRAINING_STATS is written once from
item_stats, TRAINING_ITEMS once from
item_multimodal as a dense table (row i = item i, zeros for ids without a row).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from feast import FeatureStore

from feature_repo.definitions import spark_folder_glob
from feature_repo.profiles import repo_config
from feature_repo.sequence_stats import STAT_REFS, pair_rows_asof, pair_stats_feast, stats_rows
from saviorrec.config import Config
from saviorrec.lake import Lake, atomic_path, read_table, write_table
from saviorrec.schema import (
    ITEM_MULTIMODAL,
    ITEM_PV,
    ITEM_STAT_DEFAULTS,
    ITEM_STATS,
    PADDING_ITEM_ID,
    SAMPLES,
    SEQ_STATS_ROW,
    SPLITS,
    TRAINING_ITEMS,
    TRAINING_SAMPLES,
    TRAINING_STATS,
    USER_STAT_NUMERIC,
)
from saviorrec.training_stats import STATS, stats_table


def _stat_array(values: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    dtype = np.int64 if name == "pv_bucket" else np.float32
    return np.asarray(pc.fill_null(values, ITEM_STAT_DEFAULTS[name]).to_numpy(), dtype=dtype)


def _arrow_col(values: np.ndarray, name: str) -> pa.Array:
    return pa.array(values, type=TRAINING_SAMPLES.arrow_schema().field(name).type)


def _iter_chunks(folder: str, rows: int):
    scanner = ds.dataset(folder, format="parquet").scanner(columns=SAMPLES.names, batch_size=rows)
    buffer: list[pa.RecordBatch] = []
    size = 0
    for batch in scanner.to_batches():
        buffer.append(batch)
        size += batch.num_rows
        if size >= rows:
            yield pa.Table.from_batches(buffer)
            buffer, size = [], 0
    if buffer:
        yield pa.Table.from_batches(buffer)


class TrainingSetBuilder:
    def __init__(self, cfg: Config, store: FeatureStore) -> None:
        self.cfg, self.store, self.lake = cfg, store, Lake.from_config(cfg)
        join = cfg.feast.sequence_stats_join
        self.join = ("duckdb_asof" if cfg.feast.profile == "local" else "feast") \
            if join == "auto" else join
        self.stats = stats_table(read_table(self.lake.spark("item_stats"), ITEM_STATS))
        self.stats_rows = stats_rows(self.stats)  # the ASOF join's right side, for every chunk
        self.seq_scan = f"read_parquet('{spark_folder_glob(self.lake.spark('sequences'))}')"
        item_pv = read_table(self.lake.spark("item_pv"), ITEM_PV)
        self.pv_items, self.pv_buckets = item_pv["item_id"], item_pv["pv_bucket"]
        self.ttl = store.get_feature_view("item_stats").ttl
        self.counts: dict[str, int] = {
            "candidates_without_stats": 0, "sequence_items": 0,
            "sequence_items_without_stats": 0, "candidates_without_item_pv": 0,
        }
        self.seen_items: set[int] = set()
        self.seconds: dict[str, float] = {"candidate": 0.0, "sequence": 0.0, "sequence_stats": 0.0}

    # -- 1. candidate ---------------------------------------------------------------------------
    def candidate_stats(self, chunk: pa.Table) -> dict[str, np.ndarray]:
        began = time.perf_counter()
        entity_df = pd.DataFrame({
            "row_id": np.arange(chunk.num_rows, dtype=np.int64),
            "item_id": chunk["item_id"].to_numpy(),
            "event_timestamp": pd.to_datetime(chunk["event_timestamp"].to_pandas(), utc=True),
        })
        result = self.store.get_historical_features(entity_df=entity_df, features=STAT_REFS)
        table = result.to_arrow().sort_by("row_id")
        if table.num_rows != chunk.num_rows or not np.array_equal(
            table["row_id"].to_numpy(), entity_df["row_id"].to_numpy()
        ):
            raise RuntimeError(f"get_historical_features returned {table.num_rows} rows for "
                               f"{chunk.num_rows} samples: a sample would be lost")
        self.counts["candidates_without_stats"] += table["pv"].null_count
        self.seconds["candidate"] += time.perf_counter() - began
        return {n: _stat_array(table[n], n) for n in STATS}

    # -- 2. sequence ----------------------------------------------------------------------------
    def sequences(self, chunk: pa.Table) -> pa.Table:
        began = time.perf_counter()
        con = duckdb.connect()
        keys = pa.table({"row_id": pa.array(np.arange(chunk.num_rows, dtype=np.int64)),
                         "user_id": chunk["user_id"], "event_timestamp": chunk["event_timestamp"]})
        con.register("keys", keys)
        joined = con.sql(
            "SELECT k.row_id, s.seq_item_ids, s.seq_len, "
            + "".join(f"s.{n}, " for n in USER_STAT_NUMERIC) + "s.user_id IS NULL AS missing "
            f"FROM keys k LEFT JOIN {self.seq_scan} s "
            "ON s.user_id = k.user_id AND s.event_timestamp = k.event_timestamp ORDER BY k.row_id"
        ).to_arrow_table()
        if joined.num_rows != chunk.num_rows:
            raise ValueError(f"sequences has {joined.num_rows - chunk.num_rows} duplicate rows "
                             "for a (user_id, event_timestamp) of samples")
        missing = pc.sum(joined["missing"]).as_py() or 0
        if missing:
            first = pc.index(joined["missing"], True).as_py()
            raise ValueError(
                f"sequences has no row for {missing} samples, e.g. user_id="
                f"{chunk['user_id'][first].as_py()} at {chunk['event_timestamp'][first].as_py()}"
                " (re-run the sequences job)"
            )
        self.seconds["sequence"] += time.perf_counter() - began
        return joined.cast(pa.schema([("row_id", pa.int64()),
                                      ("seq_item_ids", pa.list_(pa.int64())),
                                      ("seq_len", pa.int64()),
                                      *((n, pa.float32()) for n in USER_STAT_NUMERIC),
                                      ("missing", pa.bool_())]))

    # -- 3. sequence item stats ------------------------------------------------------------------
    def sequence_stats(self, chunk: pa.Table, seq: pa.Table) -> dict[str, pa.Array]:
        """seq_stats_row of every position of the chunk's sequences."""
        began = time.perf_counter()
        ids = pa.chunked_array(seq["seq_item_ids"]).combine_chunks()
        flat = ids.flatten().to_numpy()
        parent = pc.list_parent_indices(ids).to_numpy()
        real = np.flatnonzero(flat != PADDING_ITEM_ID)
        times = pc.take(chunk["event_timestamp"], pa.array(parent[real]))
        exploded = pa.table({"flat_idx": pa.array(real, pa.int64()),
                             "item_id": pa.array(flat[real]), "event_timestamp": times})
        con = duckdb.connect()
        con.register("exploded", exploded)
        con.execute("CREATE TEMP TABLE pairs AS SELECT (row_number() OVER () - 1)::BIGINT "
                    "AS pair_id, item_id, event_timestamp FROM "
                    "(SELECT DISTINCT item_id, event_timestamp FROM exploded)")
        pairs = con.sql("SELECT * FROM pairs ORDER BY pair_id").to_arrow_table()
        index = con.sql("SELECT e.flat_idx, p.pair_id FROM exploded e JOIN pairs p "
                        "USING (item_id, event_timestamp)").to_arrow_table()
        found = pair_rows_asof(pairs, self.stats_rows, self.ttl).sort_by("pair_id")
        pair_rows = found["stats_row"].to_numpy()
        if self.join == "feast":
            self.check_against_feast(pairs, pair_rows)
        flat_idx = index["flat_idx"].to_numpy()
        pair_of = index["pair_id"].to_numpy()
        self.counts["sequence_items"] += len(real)
        self.counts["sequence_items_without_stats"] += int((pair_rows[pair_of] == 0).sum())
        rows = np.zeros(len(flat), np.int32)
        rows[flat_idx] = pair_rows[pair_of]
        self.seen_items.update(np.unique(flat[real]).tolist())
        self.seconds["sequence_stats"] += time.perf_counter() - began
        return {SEQ_STATS_ROW: pa.ListArray.from_arrays(ids.offsets, pa.array(rows))}

    def check_against_feast(self, pairs: pa.Table, rows: np.ndarray) -> None:
        """The statistics of ``rows`` (one per pair) equal Feast's get_historical_features for
        the same (item, t), or RuntimeError naming the first pair that differs."""
        feast = pair_stats_feast(pairs, self.store).sort_by("pair_id")
        for n in STATS:
            ours = self.stats[n].to_numpy()[rows]
            theirs = _stat_array(feast[n], n)
            differ = np.flatnonzero(~np.isclose(ours, theirs, rtol=1e-6, atol=0))
            if len(differ):
                at = int(differ[0])
                raise RuntimeError(
                    f"sequence statistics differ from Feast's for {len(differ)} pairs: item_id="
                    f"{pairs['item_id'][at].as_py()} at {pairs['event_timestamp'][at].as_py()}, "
                    f"{n} {ours[at]} (ASOF row {rows[at]}) against Feast's {theirs[at]}")

    # -- all ------------------------------------------------------------------------------------
    def chunk_rows(self, chunk: pa.Table) -> pa.Table:
        bad = pc.invert(pc.is_in(chunk["split"], pa.array(SPLITS)))
        if pc.any(bad).as_py():
            value = pc.filter(chunk["split"], bad)[0].as_py()
            raise ValueError(f"samples: unknown split {value!r} (expected one of {SPLITS})")
        cand = self.candidate_stats(chunk)
        seq = self.sequences(chunk)
        seq_stats = self.sequence_stats(chunk, seq)
        pos = pc.index_in(chunk["item_id"], value_set=self.pv_items)
        self.counts["candidates_without_item_pv"] += pos.null_count
        bucket = pc.fill_null(pc.take(self.pv_buckets, pos), 0)
        self.seen_items.update(np.unique(chunk["item_id"].to_numpy()).tolist())
        columns = {
            "user_id": chunk["user_id"], "item_id": chunk["item_id"], "label": chunk["label"],
            "event_timestamp": chunk["event_timestamp"], "eval_pv_bucket": bucket,
            **{n: _arrow_col(cand[n], n) for n in STATS},
            **{n: seq[n] for n in USER_STAT_NUMERIC},
            "seq_item_ids": seq["seq_item_ids"], "seq_len": seq["seq_len"], **seq_stats,
        }
        table = pa.table(columns).select(TRAINING_SAMPLES.names)
        table = table.cast(TRAINING_SAMPLES.arrow_schema())
        TRAINING_SAMPLES.validate_arrow(table)
        return table.append_column("split", chunk["split"])


def build_training_items(cfg: Config, seen_items: set[int]) -> dict[str, Any]:
    """Dense item table, items 1..max: ids without a multimodal row get zeros (counted)."""
    lake = Lake.from_config(cfg)
    mm = read_table(lake.item_multimodal, ITEM_MULTIMODAL)
    mm = duckdb.connect().sql(
        "SELECT * FROM mm QUALIFY row_number() OVER "
        "(PARTITION BY item_id ORDER BY event_timestamp DESC) = 1").to_arrow_table()
    versions = {(e, r) for e, r in zip(mm["encoder_version"].to_pylist(),
                                        mm["rqvae_version"].to_pylist(), strict=True)}
    if len(versions) > 1:
        raise ValueError(f"item_multimodal mixes model versions {sorted(versions)}: "
                         "re-run the encoder so every item has the same version")
    dims = set(pc.unique(pc.list_value_length(mm["embedding"])).to_pylist())
    sid_lens = set(pc.unique(pc.list_value_length(mm["semantic_ids"])).to_pylist())
    if len(dims) > 1 or len(sid_lens) > 1:
        raise ValueError(f"item_multimodal: embedding lengths {dims}, semantic id lengths "
                         f"{sid_lens}: every item must have the same")
    dim = dims.pop() if dims else cfg.encoder.dim
    sid_len = sid_lens.pop() if sid_lens else cfg.rqvae.levels + 1
    mm_ids = mm["item_id"].to_numpy()
    n = int(max(mm_ids.max(initial=0), max(seen_items, default=0))) + 1
    embedding = np.zeros((n, dim), np.float32)
    semantic = np.zeros((n, sid_len), np.int64)
    if len(mm_ids):
        embedding[mm_ids] = pc.list_flatten(mm["embedding"]).to_numpy().reshape(-1, dim)
        semantic[mm_ids] = pc.list_flatten(mm["semantic_ids"]).to_numpy().reshape(-1, sid_len)
    # Row 0 (PADDING_ITEM_ID) is not written: the ranker's lookup (tf_ranker.data.load_items)
    # makes it zeros itself and rejects item id 0 in the table.
    table = pa.table({
        "item_id": pa.array(np.arange(1, n, dtype=np.int64)),
        "embedding": pa.FixedSizeListArray.from_arrays(embedding[1:].ravel(), dim).cast(
            pa.list_(pa.float32())),
        "semantic_ids": pa.FixedSizeListArray.from_arrays(semantic[1:].ravel(), sid_len).cast(
            pa.list_(pa.int64())),
    })
    write_table(table, lake.training_items, TRAINING_ITEMS)
    missing = len(seen_items - set(mm_ids.tolist()) - {PADDING_ITEM_ID})
    version = versions.pop() if versions else ("", "")
    return {"rows": table.num_rows, "embedding_dim": dim, "semantic_ids_len": sid_len,
            "encoder_version": version[0], "rqvae_version": version[1],
            "items_without_multimodal": missing}


def write_training_samples(cfg: Config) -> dict[str, Any]:
    """The local builder: every split's TRAINING_SAMPLES rows in chunks (no item table)."""
    began = time.perf_counter()
    lake = Lake.from_config(cfg)
    for name, path in (("samples", lake.spark("samples")), ("sequences", lake.spark("sequences")),
                       ("item_stats", lake.spark("item_stats"))):
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} does not exist (run the stage that writes it)")
    builder = TrainingSetBuilder(cfg, FeatureStore(config=repo_config(cfg)))
    write_table(builder.stats, lake.training_stats, TRAINING_STATS)
    rows_in = dict.fromkeys(SPLITS, 0)
    rows_out = dict.fromkeys(SPLITS, 0)
    schema = TRAINING_SAMPLES.arrow_schema()
    with ExitStack() as stack:
        tmp = {s: stack.enter_context(atomic_path(lake.training(s))) for s in SPLITS}
        writers = {s: stack.enter_context(pq.ParquetWriter(tmp[s], schema,
                                                           coerce_timestamps="us"))
                   for s in SPLITS}
        for chunk in _iter_chunks(str(lake.spark("samples")), cfg.feast.training_chunk_rows):
            for s in SPLITS:
                rows_in[s] += pc.sum(pc.equal(chunk["split"], s)).as_py() or 0
            table = builder.chunk_rows(chunk)
            for s in SPLITS:
                part = table.filter(pc.equal(table["split"], s)).drop_columns(["split"])
                writers[s].write_table(part)
                rows_out[s] += part.num_rows
        for w in writers.values():
            w.close()
        if rows_in != rows_out:
            raise RuntimeError(f"training set lost samples: in {rows_in}, out {rows_out}")
    return {
        "engine": "local", "profile": cfg.feast.profile, "sequence_stats_join": builder.join,
        "samples_in": rows_in, "samples_out": rows_out, "unknown": builder.counts,
        "seen_items": builder.seen_items,
        "seconds": {**{k: round(v, 2) for k, v in builder.seconds.items()},
                    "total": round(time.perf_counter() - began, 2)},
        "paths": {s: str(lake.training(s)) for s in SPLITS},
    }


def training_set(cfg: Config) -> dict[str, Any]:
    """The training_set stage with the local builder: samples, then the item table."""
    lake = Lake.from_config(cfg)
    if not lake.item_multimodal.exists():
        raise FileNotFoundError(f"item_multimodal: {lake.item_multimodal} does not exist "
                                "(run the stage that writes it)")
    report = write_training_samples(cfg)
    report["items"] = build_training_items(cfg, report.pop("seen_items"))
    return report
