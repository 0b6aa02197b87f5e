"""Co-click pairs (paper 3.2, the positive pairs P+ of the encoder), from the train split only.

Two clicks (label 1) of one user form a pair when they are close: at most
``coclick.max_position_gap`` apart in the user's click order (clicks ordered by time, then item
id) and at most ``coclick.max_time_gap_s`` seconds apart. Each user counts once per unordered
pair of distinct items; pairs with fewer than ``min_support`` users are dropped. Both directions
are listed and each item keeps its ``top_k`` partners by pointwise mutual information, with the
user as the unit of every count:

    score(i, j) = ln(count(i, j) * N / (users(i) * users(j)))

N = users with at least one train click, users(i) = users who clicked i in train, count(i, j) =
users who co-clicked i and j. Counting users everywhere keeps the ratio a probability ratio
(P(i, j) / (P(i) P(j))). Ties rank by count, then partner id. Truncation to top_k is per item,
so j may list i while i does not list j.

coclick_stats (one row) reports pairs, items covered and cold items covered: items whose
item_pv bucket is <= ``coclick.cold_max_bucket``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: import from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from saviorrec.config import Config
from saviorrec.lake import Lake, atomic_path
from saviorrec.schema import COCLICK, ITEM_PV, SAMPLES, TRAIN
from spark_jobs.tables import read_table, write_table

STATS_DDL = (
    "n_pairs BIGINT, n_rows BIGINT, n_users BIGINT, n_train_clicks BIGINT, items_total BIGINT, "
    "items_covered BIGINT, cold_items BIGINT, cold_items_covered BIGINT, cold_max_bucket BIGINT"
)


def train_clicks(samples: DataFrame) -> DataFrame:
    """(user_id, item_id, event_timestamp) of every train click."""
    return samples.filter((F.col("split") == TRAIN) & (F.col("label") == 1)).select(
        "user_id", "item_id", "event_timestamp"
    )


def close_pairs(clicks: DataFrame, max_time_gap_s: int, max_position_gap: int) -> DataFrame:
    """Distinct (user_id, item_a, item_b), item_a < item_b, of close clicks of each user.

    One sort per user and ``max_position_gap`` lead() columns: O(clicks * gap), no self-join.
    """
    order = Window.partitionBy("user_id").orderBy("event_timestamp", "item_id")
    micros = F.unix_micros("event_timestamp")
    following = F.array(*[
        F.struct(
            F.lead("item_id", k).over(order).alias("item"),
            F.lead(micros, k).over(order).alias("micros"),
        )
        for k in range(1, max_position_gap + 1)
    ])
    return (
        clicks.select("user_id", "item_id", micros.alias("micros"), following.alias("next"))
        .select("user_id", "item_id", "micros", F.explode("next").alias("n"))
        .filter(
            F.col("n.item").isNotNull()
            & (F.col("n.item") != F.col("item_id"))
            & (F.col("n.micros") - F.col("micros") <= F.lit(max_time_gap_s * 1_000_000))
        )
        .select(
            "user_id",
            F.least("item_id", "n.item").alias("item_a"),
            F.greatest("item_id", "n.item").alias("item_b"),
        )
        .distinct()
    )


def pair_counts(user_pairs: DataFrame, min_support: int) -> DataFrame:
    """(item_a, item_b, count): users per unordered pair, kept when count >= min_support."""
    return (
        user_pairs.groupBy("item_a", "item_b")
        .agg(F.count(F.lit(1)).alias("count"))
        .filter(F.col("count") >= min_support)
    )


def item_users(clicks: DataFrame) -> DataFrame:
    """(item_id, users): distinct users who clicked each item."""
    return clicks.groupBy("item_id").agg(F.countDistinct("user_id").alias("users"))


def pmi_scores(pairs: DataFrame, users_per_item: DataFrame, n_users: int) -> DataFrame:
    """Both directions (item_id, partner_id, count, score) of each pair, score = PMI."""
    both = pairs.select(
        F.col("item_a").alias("item_id"), F.col("item_b").alias("partner_id"), "count"
    ).unionByName(
        pairs.select(F.col("item_b").alias("item_id"), F.col("item_a").alias("partner_id"), "count")
    )
    own = users_per_item.select("item_id", F.col("users").alias("users_i"))
    other = users_per_item.select(F.col("item_id").alias("partner_id"), F.col("users").alias("users_j"))
    score = F.log(F.col("count") * F.lit(float(n_users)) / (F.col("users_i") * F.col("users_j")))
    return (
        both.join(own, "item_id").join(other, "partner_id")
        .select("item_id", "partner_id", "count", score.alias("score"))
    )


def top_partners(scored: DataFrame, top_k: int) -> DataFrame:
    """Rank partners per item (score desc, count desc, partner id asc); keep rank <= top_k."""
    order = Window.partitionBy("item_id").orderBy(
        F.col("score").desc(), F.col("count").desc(), F.col("partner_id").asc()
    )
    return scored.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= top_k)


def coverage(coclick: DataFrame, item_pv: DataFrame, cold_max_bucket: int) -> dict[str, int]:
    """Items in the co-click table, overall and among cold items (item_pv bucket <= max)."""
    covered = coclick.select("item_id").distinct().withColumn("covered", F.lit(1))
    cold = F.col("pv_bucket") <= cold_max_bucket
    row = (
        item_pv.join(covered, "item_id", "left")
        .agg(
            F.count(F.lit(1)).alias("items_total"),
            F.count("covered").alias("items_covered"),
            F.sum(F.when(cold, 1).otherwise(0)).alias("cold_items"),
            F.sum(F.when(cold & F.col("covered").isNotNull(), 1).otherwise(0)).alias(
                "cold_items_covered"
            ),
        )
        .first()
    )
    assert row is not None
    return {k: int(v or 0) for k, v in row.asDict().items()}


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    lake = Lake.from_config(cfg)
    conf = cfg.coclick
    clicks = read_table(spark, lake.spark("samples"), SAMPLES).transform(train_clicks).cache()
    totals = clicks.agg(F.countDistinct("user_id").alias("u"), F.count(F.lit(1)).alias("c")).first()
    assert totals is not None
    n_users, n_clicks = int(totals["u"]), int(totals["c"])
    pairs = (
        clicks.transform(close_pairs, conf.max_time_gap_s, conf.max_position_gap)
        .transform(pair_counts, conf.min_support)
        .cache()
    )
    n_pairs = pairs.count()
    coclick = pairs.transform(pmi_scores, item_users(clicks), n_users).transform(
        top_partners, conf.top_k
    )
    n_rows = write_table(coclick, lake.spark("coclick"), COCLICK)
    pairs.unpersist()
    clicks.unpersist()
    item_pv = read_table(spark, lake.spark("item_pv"), ITEM_PV)
    stats = {
        "n_pairs": n_pairs,
        "n_rows": n_rows,
        "n_users": n_users,
        "n_train_clicks": n_clicks,
        **coverage(read_table(spark, lake.spark("coclick"), COCLICK), item_pv, conf.cold_max_bucket),
        "cold_max_bucket": conf.cold_max_bucket,
    }
    names = [part.split(" ")[0] for part in STATS_DDL.split(", ")]
    stats_df = spark.createDataFrame([tuple(stats[k] for k in names)], STATS_DDL)
    with atomic_path(lake.spark("coclick_stats")) as tmp:
        stats_df.coalesce(1).write.mode("error").parquet(str(tmp))
    return {"rows": {"coclick": n_rows, "coclick_stats": 1}, "stats": stats}


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.runner import job_main

    return job_main("coclick", argv)


if __name__ == "__main__":
    sys.exit(main())
