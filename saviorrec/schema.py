"""Every table of the data lake, defined once.

Each :class:`Table` lists its columns with a logical dtype; the pyarrow schema, the Spark DDL
and the Feast field types are all derived from it here, so a column is named and typed in one
place only. Ids are int64 everywhere (Feast returns int64 and an int64 SavedModel input rejects
int32). Timestamps are UTC with microsecond precision (Spark and duckdb refuse nanoseconds).
Item id 0 is reserved for padding in behaviour sequences; real item ids are >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

PADDING_ITEM_ID = 0

# logical dtype -> pyarrow type
_ARROW: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "list<int64>": pa.list_(pa.int64()),
    "list<int32>": pa.list_(pa.int32()),
    "list<float32>": pa.list_(pa.float32()),
}

# logical dtype -> Spark SQL DDL type
_SPARK_DDL: dict[str, str] = {
    "int64": "BIGINT",
    "int32": "INT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "string": "STRING",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "list<int64>": "ARRAY<BIGINT>",
    "list<int32>": "ARRAY<INT>",
    "list<float32>": "ARRAY<FLOAT>",
}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    nullable: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in _ARROW:
            raise ValueError(f"column {self.name!r}: unknown dtype {self.dtype!r}")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    doc: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, _ARROW[c.dtype], c.nullable) for c in self.columns])

    def spark_ddl(self) -> str:
        return ", ".join(f"`{c.name}` {_SPARK_DDL[c.dtype]}" for c in self.columns)

    def validate_arrow(self, table: pa.Table) -> None:
        """Raise ValueError naming the first missing column or wrong dtype."""
        expected = self.arrow_schema()
        for field in expected:
            if field.name not in table.column_names:
                raise ValueError(f"table {self.name!r}: missing column {field.name!r}")
            actual = table.schema.field(field.name).type
            if actual != field.type:
                raise ValueError(
                    f"table {self.name!r}: column {field.name!r} has dtype {actual}, "
                    f"expected {field.type}"
                )


def _t(name: str, doc: str, *cols: Column) -> Table:
    return Table(name=name, columns=tuple(cols), doc=doc)


C = Column

# --- raw tables written by `saviorrec data prepare` --------------------------------------------
EVENTS = _t(
    "events",
    "One user-item interaction (a MovieLens rating is a page view; a click when rating >= label "
    "threshold).",
    C("user_id", "int64"),
    C("item_id", "int64"),
    C("rating", "float32"),
    C("event_timestamp", "timestamp"),
)

ITEMS = _t(
    "items",
    "Item side information. Text and image are optional per item.",
    C("item_id", "int64"),
    C("title", "string"),
    C("genres", "string", nullable=True, doc="pipe separated"),
    C("tags", "string", nullable=True, doc="user tags joined with ', '"),
    C("overview", "string", nullable=True),
    C("image_path", "string", nullable=True, doc="absolute path of the poster, or null"),
    C("topic", "int64", nullable=True, doc="latent topic (synthetic data only), for diagnostics"),
)

ORACLE = _t(
    "oracle",
    "Synthetic data only: each event's true click probability under the generator's rating "
    "model (saviorrec.datasets.synthetic.click_probability). A side file no model reads; "
    "evaluation scores it as the ceiling on the same rows. Keyed like the events.",
    C("user_id", "int64"),
    C("item_id", "int64"),
    C("event_timestamp", "timestamp"),
    C("click_probability", "float64"),
)

# --- Spark job outputs --------------------------------------------------------------------------
SPLITS: tuple[str, ...] = ("train", "valid", "test")  # values of SAMPLES.split, in time order
TRAIN, VALID, TEST = SPLITS

SAMPLES = _t(
    "samples",
    "Labelled samples, one per event, with the per-user temporal split.",
    C("user_id", "int64"),
    C("item_id", "int64"),
    C("label", "int64"),
    C("rating", "float32"),
    C("event_timestamp", "timestamp"),
    C("split", "string", doc="one of SPLITS: train | valid | test"),
)

COCLICK = _t(
    "coclick",
    "Top-K co-click partners per item (symmetric), train window only.",
    C("item_id", "int64"),
    C("partner_id", "int64"),
    C("count", "int64", doc="number of users who co-clicked the pair"),
    C("score", "float64", doc="popularity-corrected score (PMI)"),
    C("rank", "int32", doc="1 = best partner of item_id"),
)

ITEM_STATS = _t(
    "item_stats",
    "Daily point-in-time item snapshots: a row stamped t was computed from events strictly "
    "before t. Rows exist only where a value changed; Feast joins the latest row <= sample time.",
    C("item_id", "int64"),
    C("event_timestamp", "timestamp"),
    C("pv", "int64", doc="views (ratings) before event_timestamp"),
    C("clicks", "int64"),
    C("ctr", "float32", doc="smoothed click rate over all history"),
    C("pv_recent", "int64", doc="views in the recent window"),
    C("clicks_recent", "int64"),
    C("ctr_recent", "float32", doc="smoothed click rate in the recent window"),
    C("pv_bucket", "int64", doc="index of pv in the configured PV buckets"),
)

ITEM_PV = _t(
    "item_pv",
    "Evaluation bucket of each item: its number of TRAIN ratings (benchmark protocol).",
    C("item_id", "int64"),
    C("train_pv", "int64"),
    C("pv_bucket", "int64"),
)

SEQUENCES = _t(
    "sequences",
    "For each (user, sample time): last N clicked items strictly before that time, left-padded "
    "with 0. One extra row per user stamped after the user's last event holds the current "
    "sequence for online serving.",
    C("user_id", "int64"),
    C("event_timestamp", "timestamp"),
    C("seq_item_ids", "list<int64>"),
    C("seq_len", "int64"),
    C("user_pv", "int64", doc="the user's events (ratings) strictly before event_timestamp"),
    C("user_clicks", "int64", doc="the user's clicks strictly before event_timestamp"),
    C("user_ctr", "float32", doc="smoothed click rate of those events (stats.ctr_prior*)"),
)

# --- encoder outputs ----------------------------------------------------------------------------
EMBEDDINGS = _t(
    "encoder_embeddings",
    "SaviorEnc z of every item (written by the encoder, read by the RQ-VAE and the report).",
    C("item_id", "int64"),
    C("embedding", "list<float32>"),
    C("encoder_version", "string"),
)

OFF_THE_SHELF = _t(
    "off_the_shelf_embeddings",
    "Every item's embedding from the frozen towers before alignment (the report's Fig. 5; "
    "neither served nor versioned).",
    C("item_id", "int64"),
    C("embedding", "list<float32>"),
)

ITEM_MULTIMODAL = _t(
    "item_multimodal",
    "Behaviour-aligned multimodal embedding and semantic ids of each item.",
    C("item_id", "int64"),
    C("embedding", "list<float32>"),
    C("semantic_ids", "list<int64>", doc="L RQ codes (each in [0, K)) followed by one "
      "disambiguation index (0 unless several items share the L codes); the MBA uses the first L"),
    C("encoder_version", "string"),
    C("rqvae_version", "string"),
    C("event_timestamp", "timestamp"),
)

# --- statistics the ranker reads for the candidate and every sequence item ----------------------
ITEM_STAT_NUMERIC: tuple[str, ...] = ("pv", "clicks", "ctr", "pv_recent", "clicks_recent", "ctr_recent")
ITEM_STAT_DEFAULTS: dict[str, float] = {
    # An item without any stats row (never seen before t): zero counts, the smoothing prior as CTR
    # is filled in by the consumer from config (stats.ctr_prior); 0 here marks "unknown".
    "pv": 0,
    "clicks": 0,
    "ctr": 0.0,
    "pv_recent": 0,
    "clicks_recent": 0,
    "ctr_recent": 0.0,
    "pv_bucket": 0,
}

# --- statistics of the user (P_u of paper 3.1), stored beside the sequence ----------------------
USER_STAT_NUMERIC: tuple[str, ...] = ("user_pv", "user_clicks", "user_ctr")

# --- the ranker's training set (written by `saviorrec features training-set`) -------------------
# One row per sample: the candidate's statistics as of the sample time inline, and for every
# sequence position the row of TRAINING_STATS holding that item's statistics as of the same time
# (seq_stats_row, aligned with seq_item_ids; 0, the defaults row, for padding and for items
# without a row). The seven statistics of fifty positions inline (the layout before) were
# 2,174 bytes a sample in memory and most of its bytes on disk: at 1e8 samples more than the
# disk of the machine that builds them (issue 25). The ranker gathers them at batch time, as it
# gathers embeddings and semantic ids from TRAINING_ITEMS (saviorrec.training_stats).
SEQ_STAT_PREFIX = "seq_"
SEQ_STATS_ROW = "seq_stats_row"
TRAINING_SAMPLES = _t(
    "training_samples",
    "Point-in-time training rows for the ranker (one parquet per split).",
    C("user_id", "int64"),
    C("item_id", "int64"),
    C("label", "int64"),
    C("event_timestamp", "timestamp"),
    C("eval_pv_bucket", "int64", doc="ITEM_PV bucket of the candidate, for per-bucket AUC"),
    *(C(n, "float32") for n in ITEM_STAT_NUMERIC),
    C("pv_bucket", "int64"),
    *(C(n, "float32") for n in USER_STAT_NUMERIC),
    C("seq_item_ids", "list<int64>"),
    C("seq_len", "int64"),
    C(SEQ_STATS_ROW, "list<int32>", doc="TRAINING_STATS row of each sequence item as of the "
      "sample time; 0 (the defaults) for padding and items without a row"),
)

TRAINING_STATS = _t(
    "training_stats",
    "The item statistics the sequence positions of TRAINING_SAMPLES point at: row 0 holds "
    "ITEM_STAT_DEFAULTS (padding, no row), row r >= 1 the (r-1)-th ITEM_STATS row in "
    "(item_id, event_timestamp) order.",
    C("item_id", "int64", doc="PADDING_ITEM_ID in row 0"),
    C("event_timestamp", "timestamp", doc="the epoch in row 0"),
    *(C(n, "float32") for n in ITEM_STAT_NUMERIC),
    C("pv_bucket", "int64"),
)

TRAINING_ITEMS = _t(
    "training_items",
    "Static item table for one encoder/RQ-VAE version: row i of the ranker's lookup is item i.",
    C("item_id", "int64"),
    C("embedding", "list<float32>"),
    C("semantic_ids", "list<int64>", doc="as in item_multimodal"),
)

# --- ranker outputs -----------------------------------------------------------------------------
PREDICTIONS = _t(
    "predictions",
    "A trained ranker's score of every test row, in the test split's order (read by evaluation).",
    C("user_id", "int64"),
    C("item_id", "int64"),
    C("label", "int64"),
    C("eval_pv_bucket", "int64"),
    C("score", "float32"),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        EVENTS, ITEMS, ORACLE, SAMPLES, COCLICK, ITEM_STATS, ITEM_PV, SEQUENCES, EMBEDDINGS,
        OFF_THE_SHELF, ITEM_MULTIMODAL, TRAINING_SAMPLES, TRAINING_STATS, TRAINING_ITEMS,
        PREDICTIONS,
    )
}
