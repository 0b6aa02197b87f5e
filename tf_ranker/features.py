"""Names, dtypes and shapes of the ranker's inputs, shared by data, model and export.

Per-sample (training) batches hold B rows of everything. A serving request holds ONE user
(``user_id`` [1], ``user_stats`` [1, U], ``seq_*`` [1, S, ...]) and N candidates
(``item_*`` [N, ...]); the model broadcasts the user and sequence side over the candidates.
"""

from __future__ import annotations

from saviorrec.schema import ITEM_STAT_NUMERIC, USER_STAT_NUMERIC

USER_INPUTS: tuple[str, ...] = ("user_id", "user_stats")
CANDIDATE_INPUTS: tuple[str, ...] = (
    "item_id", "item_stats", "item_pv_bucket", "item_embedding", "item_semantic_ids",
)
SEQUENCE_INPUTS: tuple[str, ...] = (
    "seq_item_ids", "seq_stats", "seq_pv_bucket", "seq_embedding", "seq_semantic_ids",
)
BASE_SCORE = "base_score"  # optional pCTR of a main-scenario model (paper eq. 1), float32 [B]
NUM_STATS = len(ITEM_STAT_NUMERIC)  # item_stats / seq_stats columns, in ITEM_STAT_NUMERIC order
NUM_USER_STATS = len(USER_STAT_NUMERIC)  # user_stats columns, in USER_STAT_NUMERIC order
# Which user_stats columns are counts (log1p in the model): user_pv, user_clicks yes, user_ctr no.
USER_STAT_COUNTS: tuple[bool, ...] = tuple(not n.endswith("ctr") for n in USER_STAT_NUMERIC)

DTYPES: dict[str, str] = {
    "user_id": "int64", "user_stats": "float32",
    "item_id": "int64", "item_stats": "float32", "item_pv_bucket": "int64",
    "item_embedding": "float32", "item_semantic_ids": "int64",
    "seq_item_ids": "int64", "seq_stats": "float32", "seq_pv_bucket": "int64",
    "seq_embedding": "float32", "seq_semantic_ids": "int64",
    BASE_SCORE: "float32",
}


def input_names(use_base_score: bool = False) -> tuple[str, ...]:
    names = USER_INPUTS + CANDIDATE_INPUTS + SEQUENCE_INPUTS
    return names + ((BASE_SCORE,) if use_base_score else ())


def trailing_shapes(embedding_dim: int, semantic_id_width: int) -> dict[str, tuple[int, ...]]:
    """Shape of each input after its batch (and, for seq_*, sequence) axes."""
    per_item = {"stats": (NUM_STATS,), "embedding": (embedding_dim,),
                "semantic_ids": (semantic_id_width,)}
    out: dict[str, tuple[int, ...]] = {"user_stats": (NUM_USER_STATS,)}
    for name in input_names(True):
        if name in out:
            continue
        suffix = name.split("_", 1)[1]
        out[name] = per_item.get(suffix, ())
    return out
