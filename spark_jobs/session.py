"""The SparkSession of every job, built from ``cfg.spark``.

Sessions run in UTC (day boundaries of item_stats are UTC midnights), without the web UI, and
write parquet timestamps as microseconds (the data contract: Spark's INT96 default is unreadable
as a timestamp by some readers, and nanoseconds are refused by Spark and duckdb).
"""

from __future__ import annotations

import os

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from saviorrec.config import SparkConfig


def resolve_master(spark_cfg: SparkConfig, master: str | None = None) -> str:
    """The ``master`` argument, else spark-submit's own ``--master``, else ``spark_cfg.master``.

    Under spark-submit the launcher has already set spark.master; a builder that set the config's
    default again would silently run a cluster submission in local mode.
    """
    if master:
        return master
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # under spark-submit: its JVM is already running
        SparkContext._ensure_initialized()
        submitted = SparkConf().get("spark.master", None)
        if submitted:
            return submitted
    return spark_cfg.master


def build_session(spark_cfg: SparkConfig, master: str | None = None) -> SparkSession:
    """A session on ``resolve_master(spark_cfg, master)`` (default ``local[*]``)."""
    builder = (
        SparkSession.builder.master(resolve_master(spark_cfg, master))
        .appName(spark_cfg.app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
        .config("spark.driver.memory", spark_cfg.driver_memory)
        .config("spark.executor.memory", spark_cfg.executor_memory)
        .config("spark.executor.cores", str(spark_cfg.executor_cores))
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    return builder.getOrCreate()


def configure(spark: SparkSession, spark_cfg: SparkConfig) -> None:
    """Apply the runtime settings to a session that already existed (getOrCreate reuses it)."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
