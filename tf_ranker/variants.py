"""The ranker variants of the paper's ablations (Table 3) and baselines (Table 2).

- base:      target attention over item id + statistics only (no multimodal input).
- simtier:   base + the SimTier histogram of the frozen embeddings (Table 2 baseline).
- no_mba:    frozen embeddings fed straight into the bi-directional attention.
- no_raw_mm: MBA codebook initialised from the RQ codebook, no skip connection (z_align = v).
- no_bidir:  "remove the bi-directional attention block and only apply target attention over
             multimodal features": the modal TA (eq. 12) replaces the two cross blocks; the
             behaviour TA (eq. 11) of base stays, so the ablation removes only the cross-modal
             fusion (eq. 13-14) and keeps MBA.
- full:      MBA (zero-initialised, skip) + the four TA blocks.
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

    @property
    def uses_semantic_ids(self) -> bool:
        return self.mba is not None


VARIANTS: dict[str, Variant] = {
    "base": Variant(multimodal=False),
    "simtier": Variant(multimodal=False, simtier=True),
    "no_mba": Variant(multimodal=True, blocks=ALL_BLOCKS),
    "no_raw_mm": Variant(multimodal=True, mba="rq", skip=False, blocks=ALL_BLOCKS),
    "no_bidir": Variant(multimodal=True, mba="zeros", blocks=("behavior", "modal")),
    "full": Variant(multimodal=True, mba="zeros", blocks=ALL_BLOCKS),
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown ranker variant {name!r}; expected one of {list(VARIANTS)}")
    return VARIANTS[name]
