"""The SparkSession of every job, built from ``cfg.spark``.

Sessions run in UTC (day boundaries of item_stats are UTC midnights), without the web UI, and
write parquet timestamps as microseconds (the data contract: Spark's INT96 default is unreadable
as a timestamp by some readers, and nanoseconds are refused by Spark and duckdb).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


LOG4J2 = Path(__file__).with_name("log4j2.properties")  # Spark's defaults, less start-up noise


@contextmanager
def _local_ip(master: str) -> Iterator[None]:
    """SPARK_LOCAL_IP=127.0.0.1 while a local master's JVM starts (restored after): Spark warns
    twice at start-up that the host name resolves to a loopback address and asks for the
    variable, and a local master runs on loopback. A cluster master is left alone."""
    if not master.startswith("local") or "SPARK_LOCAL_IP" in os.environ:
        yield
        return
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    try:
        yield
    finally:
        del os.environ["SPARK_LOCAL_IP"]


def build_session(spark_cfg: SparkConfig, master: str | None = None) -> SparkSession:
    """A session on ``resolve_master(spark_cfg, master)`` (default ``local[*]``), logging what
    a user should act on only (LOG4J2, _local_ip)."""
    master = resolve_master(spark_cfg, master)
    builder = SparkSession.builder.appName(spark_cfg.app_name)
    for key, value in spark_cfg.conf().items():
        builder = builder.config(key, value)
    builder = (
        builder.master(master)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local"):
        # Python workers (the training set's as-of lookup) run this interpreter, whose
        # environment has the project's packages, not whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if LOG4J2.is_file():
        builder = builder.config("spark.driver.extraJavaOptions",
                                 f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}")
    with _local_ip(master):
        return builder.getOrCreate()


def configure(spark: SparkSession, spark_cfg: SparkConfig) -> None:
    """Apply the runtime settings to a session that already existed (getOrCreate reuses it)."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")


RUNTIME_KEYS = ("spark.sql.session.timeZone", "spark.sql.shuffle.partitions",
                "spark.sql.parquet.outputTimestampType")


@contextmanager
def session_scope(spark_cfg: SparkConfig, master: str | None = None) -> Iterator[SparkSession]:
    """The session active in this process (its runtime settings set, restored after), else a new
    one from ``spark_cfg`` (stopped after). A borrowed session on another master than ``master``
    is an error: the caller asked for a cluster and would silently run elsewhere."""
    active = SparkSession.getActiveSession()
    if active is not None and master is not None and active.sparkContext.master != master:
        raise ValueError(
            f"a SparkSession on {active.sparkContext.master!r} is already active in this process; "
            f"cannot run on {master!r} (stop it first or run through spark-submit)"
        )
    spark = active or build_session(spark_cfg, master)
    previous = {key: spark.conf.get(key, None) for key in RUNTIME_KEYS}
    configure(spark, spark_cfg)
    try:
        yield spark
    finally:
        if active is None:
            spark.stop()
        else:  # leave a borrowed session as it was
            for key, value in previous.items():
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
