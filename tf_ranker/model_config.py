"""The ranker's model config: one frozen dataclass built once from the run's config and the data.

:func:`model_config` (tf_ranker.train) fills it: vocabularies, widths of the embeddings and
semantic ids, and the RQ codebook's shape from the data; the widths of the model from
``cfg.ranker``. ``SaviorRanker(config)`` builds every weight from it, ``get_config`` saves it in
the ``.keras`` file (with :data:`CONFIG_VERSION`) and ``from_config`` rebuilds it.

Defaults live in one place, ``saviorrec.config.RankerConfig``: a field not given here takes
that class's default (e.g. ``id_dim``), and ``mba_dim`` the variant's own width (Table 5) or,
without one, ``ranker.mba_dim``.

Versions of the saved config: 1, the flat keyword arguments that SaviorRanker took before this
dataclass (from the commit that added ``id_dropout`` and ItemIdMask on: a file saved before then
lacks that layer's weights and cannot load); 2, this dataclass's fields with ``config_version``.
Both load; a file of another version, or of a version-1 file missing fields, fails naming the
version it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saviorrec.config import RankerConfig
from tf_ranker.variants import get_variant

CONFIG_VERSION = 2
READABLE_VERSIONS = (1, 2)
# ranker.standardize_stats: per-column mean and std of the log1p'd item and user statistics
# (tf_ranker.train.stat_moments, measured on the training split).
STAT_MOMENT_KEYS = ("item_mean", "item_std", "user_mean", "user_std")
_RUN = RankerConfig()  # the defaults of every width below


@dataclass(frozen=True)
class RankerModelConfig:
    variant: str
    # from the data
    num_users: int  # user id vocabulary (ids outside map to row 0)
    num_items: int  # item id vocabulary, item 0 = padding
    num_pv_buckets: int
    embedding_dim: int  # d of the multimodal embedding
    levels: int  # L: RQ levels the MBA reads
    codebook_size: int  # K
    semantic_id_width: int = 0  # L codes + the disambiguation index; 0: L + 1
    use_base_score: bool = False
    rqvae_version: str | None = None  # the semantic ids' version: serving refuses another
    stat_moments: Mapping[str, tuple[float, ...]] | None = None  # STAT_MOMENT_KEYS
    # from cfg.ranker
    mba_dim: int = 0  # 0: the variant's width, else ranker.mba_dim (resolved in __post_init__)
    id_dim: int = _RUN.id_dim
    stat_dim: int = _RUN.stat_dim
    heads: int = _RUN.heads
    attention_dim: int = _RUN.attention_dim
    mba_norm_epsilon: float = _RUN.mba_norm_epsilon
    dnn_units: tuple[int, ...] = field(default=_RUN.dnn_units)
    feature_cross: bool = _RUN.feature_cross
    simtier_bins: int = _RUN.simtier_bins
    attention_normalization: str = _RUN.attention_normalization
    id_dropout: float = _RUN.id_dropout

    def __post_init__(self) -> None:
        spec = get_variant(self.variant)
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "semantic_id_width", self.semantic_id_width or self.levels + 1)
        for name in ("num_users", "num_items", "num_pv_buckets", "embedding_dim", "levels",
                     "codebook_size", "semantic_id_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mba_dim and spec.mba_dim is not None and self.mba_dim != spec.mba_dim:
            raise ValueError(f"variant {self.variant!r} has mba_dim={spec.mba_dim}, "
                             f"got {self.mba_dim}")
        units = tuple(int(u) for u in self.dnn_units)
        if not units or min(units) < 1:
            raise ValueError(f"dnn_units={list(units)} must be non-empty positive widths")
        moments = self.stat_moments
        if moments is not None and set(moments) != set(STAT_MOMENT_KEYS):
            raise ValueError(f"stat_moments has keys {sorted(moments)}, expected "
                             f"{list(STAT_MOMENT_KEYS)}")
        set_(self, "mba_dim", self.mba_dim or spec.mba_dim or _RUN.mba_dim)
        set_(self, "dnn_units", units)
        if moments is not None:
            set_(self, "stat_moments",
                 {k: tuple(float(x) for x in moments[k]) for k in STAT_MOMENT_KEYS})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (lists for tuples), without the version."""
        out = dataclasses.asdict(self)
        out["dnn_units"] = list(self.dnn_units)
        if self.stat_moments is not None:
            out["stat_moments"] = {k: list(v) for k, v in self.stat_moments.items()}
        return out

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> RankerModelConfig:
        """The config of ``to_dict`` plus ``config_version`` (version 1 if absent: the flat
        keyword arguments of SaviorRanker before this class)."""
        fields = dict(saved)
        version = fields.pop("config_version", 1)
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"SaviorRanker config version {version}: this saviorrec reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; load it with the saviorrec that saved "
                f"it (tf_ranker.model_config.CONFIG_VERSION = {version})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"SaviorRanker config version {version} has unknown fields "
                             f"{unknown}: load it with the saviorrec that saved it")
        missing = sorted(names - set(fields)) if version == 1 else []
        if missing:
            raise ValueError(
                f"SaviorRanker config version 1 without {missing}: saved before SaviorRanker "
                "took id_dropout (ItemIdMask), whose weights it lacks; this saviorrec reads "
                "version 1 from then on, and version 2: retrain the model")
        return cls(**fields)
