"""The Feast objects of saviorrec, declared once for both profiles.

Sources read the run's lake (``Lake``): the Spark output folders and the encoder's parquet file.
The local profile reads them with duckdb (``FileSource``), production with Spark (``SparkSource``);
everything else is the same. Schemas come from :mod:`saviorrec.schema` via :mod:`fields`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from feature_repo.fields import TIMESTAMP_COLUMN, feature_fields
from saviorrec.config import Config
from saviorrec.lake import Lake
from saviorrec.schema import ITEM_MULTIMODAL, ITEM_STATS, SEQUENCES, Table

PROJECT = "saviorrec"
ITEM_KEY = "item_id"
USER_KEY = "user_id"
# Push sources (FeatureStore.push) of the item views, over the same batch sources: onboarding
# (items add, POST /items) pushes new items' multimodal rows and PV-0 statistics, the streaming
# job pushes fresh item_stats rows and user rows.
ITEM_MULTIMODAL_PUSH = "item_multimodal_push"
ITEM_STATS_PUSH = "item_stats_push"
# The user_sequence view's push source: the streaming job's user rows (issue 28).
USER_SEQUENCE_PUSH = "user_sequence_push"
# Tags of the item_multimodal view: list lengths, so that online defaults (a zero embedding,
# semantic ids 0) have the shape the ranker was built for without a config at serving time.
TAG_EMBEDDING_DIM = "embedding_dim"
TAG_SEMANTIC_IDS_LEN = "semantic_ids_len"


@dataclass(frozen=True)
class Definitions:
    item: Entity
    user: Entity
    item_stats: FeatureView
    item_multimodal: FeatureView
    user_sequence: FeatureView
    ranker_training: FeatureService
    ranker_serving: FeatureService

    def objects(self) -> list[Entity | FeatureView | FeatureService]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def spark_folder_glob(folder: Path) -> str:
    """duckdb reads a Spark output folder through a glob of its part files."""
    return str(folder / "*.parquet")


def _source(table: Table, path: Path, *, folder: bool, profile: str) -> DataSource:
    if profile == "production":
        return SparkSource(
            name=table.name, path=str(path), file_format="parquet",
            timestamp_field=TIMESTAMP_COLUMN,
        )
    return FileSource(
        name=table.name, path=spark_folder_glob(path) if folder else str(path),
        file_format=ParquetFormat(), timestamp_field=TIMESTAMP_COLUMN,
    )


def build(cfg: Config) -> Definitions:
    """Every Feast object for the run of ``cfg`` (its lake, its profile)."""
    lake, profile = Lake.from_config(cfg), cfg.feast.profile
    item = Entity(name="item", join_keys=[ITEM_KEY], value_type=ValueType.INT64,
                  description="an item (movie); id 0 is sequence padding")
    user = Entity(name="user", join_keys=[USER_KEY], value_type=ValueType.INT64)
    item_stats = FeatureView(
        name="item_stats", entities=[item], ttl=timedelta(days=cfg.feast.item_stats_ttl_days),
        schema=feature_fields(ITEM_STATS), online=True,
        source=PushSource(name=ITEM_STATS_PUSH, batch_source=_source(
            ITEM_STATS, lake.spark("item_stats"), folder=True, profile=profile)),
        description=ITEM_STATS.doc,
    )
    item_multimodal = FeatureView(
        name="item_multimodal", entities=[item], ttl=timedelta(0),  # 0: never expires
        schema=feature_fields(ITEM_MULTIMODAL), online=True,
        source=PushSource(name=ITEM_MULTIMODAL_PUSH, batch_source=_source(
            ITEM_MULTIMODAL, lake.item_multimodal, folder=False, profile=profile)),
        tags={TAG_EMBEDDING_DIM: str(cfg.encoder.dim),
              TAG_SEMANTIC_IDS_LEN: str(cfg.rqvae.levels + 1)},
        description=ITEM_MULTIMODAL.doc,
    )
    user_sequence = FeatureView(
        name="user_sequence", entities=[user], ttl=timedelta(0),
        schema=feature_fields(SEQUENCES), online=True,
        source=PushSource(name=USER_SEQUENCE_PUSH, batch_source=_source(
            SEQUENCES, lake.spark("sequences"), folder=True, profile=profile)),
        description=SEQUENCES.doc,
    )
    return Definitions(
        item=item, user=user, item_stats=item_stats, item_multimodal=item_multimodal,
        user_sequence=user_sequence,
        ranker_training=FeatureService(
            name="ranker_training", features=[item_stats, user_sequence],
            description="point-in-time statistics of the candidate and its behaviour sequence",
        ),
        ranker_serving=FeatureService(
            name="ranker_serving", features=[item_stats, item_multimodal, user_sequence],
            description="online: sequence of the user, statistics and multimodal ids of items",
        ),
    )
