"""Feast field types derived from the lake contract (saviorrec.schema), never restated here."""

from __future__ import annotations

from feast import Field
from feast.types import (
    Array,
    Bool,
    FeastType,
    Float32,
    Float64,
    Int32,
    Int64,
    String,
    UnixTimestamp,
)

from saviorrec.schema import Table

# logical dtype of saviorrec.schema -> Feast type
FEAST_TYPES: dict[str, FeastType] = {
    "int64": Int64,
    "int32": Int32,
    "float32": Float32,
    "float64": Float64,
    "string": String,
    "bool": Bool,
    "timestamp": UnixTimestamp,
    "list<int64>": Array(Int64),
    "list<float32>": Array(Float32),
}

TIMESTAMP_COLUMN = "event_timestamp"


def feature_fields(table: Table, *, exclude: tuple[str, ...] = ()) -> list[Field]:
    """The Feast schema of ``table``: every column but the event timestamp and ``exclude``."""
    return [
        Field(name=c.name, dtype=FEAST_TYPES[c.dtype], description=c.doc)
        for c in table.columns
        if c.name != TIMESTAMP_COLUMN and c.name not in exclude
    ]


def feature_names(table: Table, *, keys: tuple[str, ...]) -> list[str]:
    """The feature columns of ``table``: neither the timestamp nor a join key."""
    return [f.name for f in feature_fields(table, exclude=keys)]
