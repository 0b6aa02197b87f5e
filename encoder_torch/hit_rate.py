"""i2i Hit@K with faiss: inner product on L2-normalised vectors (cosine), flat or approximate."""

from __future__ import annotations

import faiss
import numpy as np

from saviorrec.metrics import hit_at_k


def build_index(vectors: np.ndarray, *, kind: str = "flat", nlist: int = 256, nprobe: int = 16,
                hnsw_m: int = 32) -> faiss.Index:
    """Exact ("flat") or approximate ("ivf", "hnsw") inner-product index over ``vectors``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, min(nlist, len(vectors)),
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = nprobe
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index kind {kind!r}: use flat, ivf or hnsw")
    index.add(vectors)
    return index


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def retrieve(embeddings: np.ndarray, item_ids: np.ndarray, queries: np.ndarray, *, k: int,
             index_kind: str = "flat") -> dict[int, np.ndarray]:
    """Top-k item ids for each distinct query id, the query itself excluded."""
    vectors = normalise(embeddings)
    index = build_index(vectors, kind=index_kind)
    unique = np.unique(queries)
    rows = np.searchsorted(item_ids, unique)
    _, found = index.search(vectors[rows], k + 1)
    out = {}
    for query, hits in zip(unique.tolist(), found, strict=True):
        ids = item_ids[hits[hits >= 0]]
        out[query] = ids[ids != query][:k]
    return out


def i2i_hit_rate(*, embeddings: np.ndarray, item_ids: np.ndarray, queries: np.ndarray,
                 targets: np.ndarray, k: int, index_kind: str = "flat") -> float:
    """Share of (query, next click) pairs whose next click is in the query's top k neighbours."""
    if len(queries) == 0:
        return float("nan")
    found = retrieve(embeddings, item_ids, queries, k=k, index_kind=index_kind)
    padded = np.full((len(queries), k), -1, dtype=np.int64)
    for i, q in enumerate(queries.tolist()):
        padded[i, :len(found[q])] = found[q]
    return hit_at_k(padded, targets)
