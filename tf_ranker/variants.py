"""The ranker variants of the paper's ablations (Tables 3, 5; Fig. 4) and baselines (Table 2).

- base:      target attention over item id + statistics only (no multimodal input).
- simtier:   base + the SimTier histogram of the frozen embeddings (Table 2 baseline).
- no_mba:    frozen embeddings fed straight into the bi-directional attention.
- no_raw_mm: MBA codebook initialised from the RQ codebook, no skip connection (z_align = v).
- no_bidir:  "remove the bi-directional attention block and only apply target attention over
             multimodal features": the modal TA (eq. 12) replaces the two cross blocks; the
             behaviour TA (eq. 11) of base stays, so the ablation removes only the cross-modal
             fusion (eq. 13-14) and keeps MBA.
- full:      MBA (zero-initialised, skip) + the four TA blocks.

Table 5 (MBA codebook dimension), the full model with a narrower MBA codebook: each level's
rows have width d_mba = 32, 16 or 8 instead of 64 (the fusion layer then reads L x d_mba):

- full_mba32, full_mba16, full_mba8.

Fig. 4 (AUC drop per removed feature group), the full model without one group, for the
candidate and every sequence item alike (the behaviour vector h and everything that reads it):

- no_id:     no item-id embedding: h = [statistics, pv_bucket embedding] (the user id stays).
- no_stats:  no statistics: h = [item-id embedding], no log counts / click rates, no pv_bucket.
- no_mm:     no multimodal features and none of the modules that read them (MBA, the modal and
             cross-modal attention blocks, z in the DNN): the same network as base, kept under
             its own name so Fig. 4 reads its own runs.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_BLOCKS = ("behavior", "modal", "behavior2modal", "modal2behavior")


@dataclass(frozen=True)
class Variant:
    multimodal: bool  # z enters attention and DNN
    mba: str | None = None  # None | "zeros" | "rq" (codebook initialisation)
    skip: bool = True  # z_align = z + v_align (False: v_align only)
    blocks: tuple[str, ...] = ("behavior",)
    simtier: bool = False
    use_id: bool = True  # item-id embedding in h
    use_stats: bool = True  # statistics (log counts, click rates) + pv_bucket embedding in h
    mba_dim: int | None = None  # MBA codebook width; None: ranker.mba_dim

    def __post_init__(self) -> None:
        if not (self.use_id or self.use_stats):
            raise ValueError("a variant needs item ids or statistics in the behaviour vector h")
        if self.mba_dim is not None and (self.mba != "zeros" or self.mba_dim < 1):
            raise ValueError(f"mba_dim={self.mba_dim} needs a zero-initialised MBA (mba='zeros'; "
                             "the RQ-initialised codebook has the RQ latent width)")

    @property
    def uses_semantic_ids(self) -> bool:
        return self.mba is not None


_BASE = Variant(multimodal=False)

VARIANTS: dict[str, Variant] = {
    "base": _BASE,
    "simtier": Variant(multimodal=False, simtier=True),
    "no_mba": Variant(multimodal=True, blocks=ALL_BLOCKS),
    "no_raw_mm": Variant(multimodal=True, mba="rq", skip=False, blocks=ALL_BLOCKS),
    "no_bidir": Variant(multimodal=True, mba="zeros", blocks=("behavior", "modal")),
    "full": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS),
    "full_mba32": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS, mba_dim=32),
    "full_mba16": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS, mba_dim=16),
    "full_mba8": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS, mba_dim=8),
    "no_id": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS, use_id=False),
    "no_stats": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS, use_stats=False),
    "no_mm": _BASE,
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown ranker variant {name!r}; expected one of {list(VARIANTS)}")
    return VARIANTS[name]
