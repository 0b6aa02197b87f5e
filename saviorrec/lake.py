"""Where every table and model of a run lives, and atomic writes.

All paths come from the run folder of the config (``run.root``); no module builds a lake path
by hand. Writes go to a temporary sibling and are renamed into place, so a failed stage never
leaves a half-written output and a re-run replaces, never appends.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saviorrec.config import Config
from saviorrec.schema import Table


@dataclass(frozen=True)
class Lake:
    root: Path  # the run folder

    @classmethod
    def from_config(cls, cfg: Config) -> Lake:
        return cls(cfg.run_dir())

    # raw
    @property
    def events(self) -> Path:
        return self.root / "lake" / "raw" / "events.parquet"

    @property
    def items(self) -> Path:
        return self.root / "lake" / "raw" / "items.parquet"

    @property
    def oracle(self) -> Path:
        """Synthetic runs only: each event's true click probability (schema.ORACLE)."""
        return self.root / "lake" / "raw" / "oracle.parquet"

    @property
    def prepare_summary(self) -> Path:
        return self.root / "lake" / "raw" / "summary.json"

    # spark outputs (parquet folders)
    def spark(self, job_table: str) -> Path:
        """samples | coclick | coclick_stats | item_stats | item_pv | sequences"""
        return self.root / "lake" / "spark" / job_table

    # encoder outputs
    @property
    def tower_cache(self) -> Path:
        return self.root / "lake" / "cache" / "towers"

    @property
    def item_multimodal(self) -> Path:
        return self.root / "lake" / "features" / "item_multimodal.parquet"

    # training set
    def training(self, split: str) -> Path:
        return self.root / "lake" / "training" / f"{split}.parquet"

    @property
    def training_items(self) -> Path:
        return self.root / "lake" / "training" / "items.parquet"

    # models
    @property
    def encoder_dir(self) -> Path:
        return self.root / "models" / "encoder"

    @property
    def rqvae_dir(self) -> Path:
        return self.root / "models" / "rqvae"

    def ranker_dir(self, variant: str, seed: int) -> Path:
        return self.root / "models" / "ranker" / variant / f"seed{seed}"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def feast_data(self) -> Path:
        return self.root / "feast"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def metrics(self) -> Path:
        return self.root / "report" / "metrics.json"


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``final`` (file or folder)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_table(table: pa.Table, path: Path, schema: Table) -> None:
    """Validate against the contract, then write one parquet file atomically (us timestamps)."""
    table = table.select(schema.names).cast(schema.arrow_schema())
    schema.validate_arrow(table)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=False)


def read_table(path: Path, schema: Table) -> pa.Table:
    """Read a parquet file or folder and check it against the contract."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{schema.name}: {path} does not exist (run the stage that writes it)")
    table = pq.read_table(path)
    schema.validate_arrow(table)
    return table
