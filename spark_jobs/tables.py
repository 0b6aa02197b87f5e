"""Reading and writing lake tables with the contract of ``saviorrec.schema``.

Every output is cast to its schema's column order and types, written to a temporary sibling
folder and renamed into place (``saviorrec.lake.atomic_path``): a failed job leaves the previous
output intact and a re-run replaces it, never appends.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from saviorrec.lake import atomic_path
from saviorrec.schema import Table


def conform(df: DataFrame, table: Table, keep: tuple[str, ...] = ()) -> DataFrame:
    """Select the table's columns in contract order, cast to the contract's types.

    ``keep``: columns outside the contract carried after them as they are (e.g. a partition
    column that the writer turns into folders).
    """
    missing = [name for name in (*table.names, *keep) if name not in df.columns]
    if missing:
        raise ValueError(f"{table.name}: missing columns {missing} (have {df.columns})")
    schema = StructType.fromDDL(table.spark_ddl())
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields]
                     + [F.col(name) for name in keep])


def read_table(spark: SparkSession, path: Path, table: Table) -> DataFrame:
    """Read a parquet file or folder; a missing input names the stage that writes it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{table.name}: {path} does not exist (run the stage that writes it)")
    return conform(spark.read.parquet(str(path)), table)


def write_table(df: DataFrame, path: Path, table: Table) -> int:
    """Write ``df`` atomically as a parquet folder at ``path``; return its row count."""
    out = conform(df, table)
    with atomic_path(Path(path)) as tmp:
        out.write.mode("error").parquet(str(tmp))
    return out.sparkSession.read.parquet(str(path)).count()
