"""The ranker's inputs, specified once: name, dtype and shape of each.

Training batches (tf_ranker.data), the packed layout (tf_ranker.packed), the SavedModel's
serving signature (tf_ranker.export) and the service's request tensors (serving) are all built
from :data:`INPUTS`; no other module spells an input name.

Every input belongs to one side:
- ``user``: one row per sample in training [B, ...]; ONE user per serving request [1, ...];
- ``candidate``: one row per sample [B, ...], or per candidate [N, ...];
- ``sequence``: the user's behaviour sequence, [B, S, ...] in training, [1, S, ...] in serving.
The model broadcasts the user and sequence side over the candidates.

and one source:
- ``sample``: a training-set row (TRAINING_SAMPLES) or, online, the request and the user's row;
- ``item``: the item's embedding or semantic ids, from the item table (TRAINING_ITEMS) in
  training, from Feast's item_multimodal view online;
- ``stats_row``: a sequence item's statistics as of the sample time, from the training set's
  statistics table (TRAINING_STATS) by the row in the sample's ``seq_stats_row`` in training,
  from Feast's item_stats view online.

``feature`` is what an input holds of its side, e.g. ``stats`` for ``item_stats`` and
``seq_stats``; per-item features (stats, pv_bucket, embedding, semantic_ids) have the same
trailing shape for the candidate and every sequence position.
"""

from __future__ import annotations

from dataclasses import dataclass

from saviorrec.schema import ITEM_STAT_NUMERIC, USER_STAT_NUMERIC

USER, CANDIDATE, SEQUENCE = "user", "candidate", "sequence"
SAMPLE, ITEM, STATS_ROW = "sample", "item", "stats_row"

SIGNATURE = "serving_default"  # the SavedModel's signature
OUTPUT = "score"  # its output: pCTR float32 [N]

NUM_STATS = len(ITEM_STAT_NUMERIC)  # item_stats / seq_stats columns, in ITEM_STAT_NUMERIC order
NUM_USER_STATS = len(USER_STAT_NUMERIC)  # user_stats columns, in USER_STAT_NUMERIC order
# Which user_stats columns are counts (log1p in the model): user_pv, user_clicks yes, user_ctr no.
USER_STAT_COUNTS: tuple[bool, ...] = tuple(not n.endswith("ctr") for n in USER_STAT_NUMERIC)

USER_ID = "user_id"
USER_STATS = "user_stats"
ITEM_ID = "item_id"
ITEM_STATS = "item_stats"
ITEM_PV_BUCKET = "item_pv_bucket"
ITEM_EMBEDDING = "item_embedding"
ITEM_SEMANTIC_IDS = "item_semantic_ids"
SEQ_ITEM_IDS = "seq_item_ids"
SEQ_STATS = "seq_stats"
SEQ_PV_BUCKET = "seq_pv_bucket"
SEQ_EMBEDDING = "seq_embedding"
SEQ_SEMANTIC_IDS = "seq_semantic_ids"
BASE_SCORE = "base_score"  # optional pCTR of a main-scenario model (paper eq. 1), float32 [B]


@dataclass(frozen=True)
class RankerInput:
    name: str
    dtype: str  # numpy / TensorFlow dtype name
    side: str  # USER | CANDIDATE | SEQUENCE
    feature: str  # id | stats | user_stats | pv_bucket | embedding | semantic_ids | base_score
    source: str = SAMPLE  # SAMPLE | ITEM | STATS_ROW

    def trailing(self, embedding_dim: int, semantic_id_width: int) -> tuple[int, ...]:
        """Shape after the batch (and, on the sequence side, the sequence) axes."""
        return {"stats": (NUM_STATS,), "user_stats": (NUM_USER_STATS,),
                "embedding": (embedding_dim,),
                "semantic_ids": (semantic_id_width,)}.get(self.feature, ())

    def serving_shape(self, embedding_dim: int, semantic_id_width: int) -> list[int | None]:
        """Shape in the serving signature (None: any size, N candidates or S positions)."""
        lead: list[int | None] = {USER: [1], SEQUENCE: [1, None], CANDIDATE: [None]}[self.side]
        return [*lead, *self.trailing(embedding_dim, semantic_id_width)]


INPUTS: tuple[RankerInput, ...] = (
    RankerInput(USER_ID, "int64", USER, "id"),
    RankerInput(USER_STATS, "float32", USER, "user_stats"),
    RankerInput(ITEM_ID, "int64", CANDIDATE, "id"),
    RankerInput(ITEM_STATS, "float32", CANDIDATE, "stats"),
    RankerInput(ITEM_PV_BUCKET, "int64", CANDIDATE, "pv_bucket"),
    RankerInput(ITEM_EMBEDDING, "float32", CANDIDATE, "embedding", ITEM),
    RankerInput(ITEM_SEMANTIC_IDS, "int64", CANDIDATE, "semantic_ids", ITEM),
    RankerInput(SEQ_ITEM_IDS, "int64", SEQUENCE, "id"),
    RankerInput(SEQ_STATS, "float32", SEQUENCE, "stats", STATS_ROW),
    RankerInput(SEQ_PV_BUCKET, "int64", SEQUENCE, "pv_bucket", STATS_ROW),
    RankerInput(SEQ_EMBEDDING, "float32", SEQUENCE, "embedding", ITEM),
    RankerInput(SEQ_SEMANTIC_IDS, "int64", SEQUENCE, "semantic_ids", ITEM),
    RankerInput(BASE_SCORE, "float32", CANDIDATE, "base_score"),
)
BY_NAME: dict[str, RankerInput] = {i.name: i for i in INPUTS}
DTYPES: dict[str, str] = {i.name: i.dtype for i in INPUTS}
# Per-item features of the item table / item_multimodal view (the model may gather them itself).
ITEM_TABLE_INPUTS: tuple[str, ...] = tuple(i.name for i in INPUTS if i.source == ITEM)
# Per-position statistics of the statistics table (the model may gather them itself).
STATS_TABLE_INPUTS: tuple[str, ...] = tuple(i.name for i in INPUTS if i.source == STATS_ROW)


def inputs(use_base_score: bool = False) -> tuple[RankerInput, ...]:
    """The model's inputs, in signature order; base_score only when the model reads it."""
    return tuple(i for i in INPUTS if use_base_score or i.name != BASE_SCORE)


def input_names(use_base_score: bool = False) -> tuple[str, ...]:
    return tuple(i.name for i in inputs(use_base_score))


def of_side(side: str, use_base_score: bool = False) -> tuple[RankerInput, ...]:
    return tuple(i for i in inputs(use_base_score) if i.side == side)


def trailing_shapes(embedding_dim: int, semantic_id_width: int) -> dict[str, tuple[int, ...]]:
    """Shape of each input after its batch (and, for seq_*, sequence) axes."""
    return {i.name: i.trailing(embedding_dim, semantic_id_width) for i in INPUTS}


def serving_shapes(embedding_dim: int, semantic_id_width: int,
                   use_base_score: bool = False) -> dict[str, list[int | None]]:
    """Input shapes of the serving signature: ONE user and sequence, N candidates."""
    return {i.name: i.serving_shape(embedding_dim, semantic_id_width)
            for i in inputs(use_base_score)}
