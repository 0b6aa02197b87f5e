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
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from saviorrec.config import Config, dump_config
from saviorrec.schema import Table

TRAINING_STATS_FILE = "stats.parquet"


def training_stats_beside(split: Path) -> Path:
    """The TRAINING_STATS table of the training set that the split parquet ``split`` is part of
    (a training set is one folder: its splits, its statistics and its item table)."""
    return split.parent / TRAINING_STATS_FILE


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
    def cache(self) -> Path:
        """Caches keyed by content (safe to share between runs)."""
        return self.root / "lake" / "cache"

    @property
    def tower_cache(self) -> Path:
        return self.cache / "towers"

    @property
    def item_multimodal(self) -> Path:
        return self.root / "lake" / "features" / "item_multimodal.parquet"

    # onboarding (items added to a finished run: `saviorrec items add`, POST /items)
    @property
    def onboarded_items(self) -> Path:
        """schema.ITEMS rows of every item onboarded after the batch pipeline (its content, to
        tell a repeated add from a conflicting one)."""
        return self.root / "lake" / "online" / "onboarded_items.parquet"

    @property
    def onboard_lock(self) -> Path:
        """Lock file: one onboarding writes the offline sources and the online store at a time."""
        return self.root / "lake" / "online" / ".onboard.lock"

    # training set
    @property
    def training_dir(self) -> Path:
        return self.root / "lake" / "training"

    def training(self, split: str) -> Path:
        return self.training_dir / f"{split}.parquet"

    @property
    def training_items(self) -> Path:
        return self.training_dir / "items.parquet"

    @property
    def training_stats(self) -> Path:
        """TRAINING_STATS: the statistics the splits' sequence positions point at."""
        return training_stats_beside(self.training("train"))

    # models: the encoder stage's files (the RQ-VAE's codebooks and version are read by the ranker)
    @property
    def encoder_dir(self) -> Path:
        return self.root / "models" / "encoder"

    @property
    def encoder_checkpoint(self) -> Path:
        return self.encoder_dir / "saviorenc.pt"

    @property
    def encoder_embeddings(self) -> Path:
        """schema.EMBEDDINGS: written by the encoder, read by the RQ-VAE and the report."""
        return self.encoder_dir / "embeddings.parquet"

    @property
    def off_the_shelf_embeddings(self) -> Path:
        """schema.OFF_THE_SHELF: the towers' embeddings before alignment (the report's Fig. 5)."""
        return self.encoder_dir / "off_the_shelf.parquet"

    @property
    def encoder_version(self) -> Path:
        """JSON {"encoder_version"}."""
        return self.encoder_dir / "version.json"

    @property
    def rqvae_dir(self) -> Path:
        return self.root / "models" / "rqvae"

    @property
    def rqvae_checkpoint(self) -> Path:
        return self.rqvae_dir / "rqvae.pt"

    @property
    def rqvae_codebooks(self) -> Path:
        """float32 [L, K, latent] (.npy): the ranker's no_raw_mm copies it into its MBA."""
        return self.rqvae_dir / "codebooks.npy"

    @property
    def rqvae_version(self) -> Path:
        """JSON {"rqvae_version", "encoder_version", "levels", "codebook_size", "latent_dim"}."""
        return self.rqvae_dir / "version.json"

    @property
    def ranker_root(self) -> Path:
        """Every variant's and seed's ranker_dir: <variant>/seed<seed>."""
        return self.root / "models" / "ranker"

    def ranker_dir(self, variant: str, seed: int) -> Path:
        return self.ranker_root / variant / f"seed{seed}"

    def ranker(self, variant: str, seed: int) -> RankerFiles:
        return RankerFiles(self.ranker_dir(variant, seed))

    def ranker_metas(self) -> list[Path]:
        """The meta of every variant and seed trained in this run."""
        return sorted(self.ranker_root.glob(f"*/seed*/{RankerFiles.META}"))

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def export(self) -> ExportFiles:
        return ExportFiles(self.export_dir)

    @property
    def run_config(self) -> Path:
        """The run's resolved configuration (overlays such as --quick applied), written by
        :func:`write_run_config`: what the run did, and what ``feast/repo.py`` builds from."""
        return self.root / "config.yaml"

    @property
    def feast_data(self) -> Path:
        """The run's Feast repository: ``feast -c <run>/feast ...`` (registry, sqlite, yaml)."""
        return self.root / "feast"

    @property
    def feast_yaml(self) -> Path:
        """feature_store.yaml of the run's profile, paths relative to ``feast_data``."""
        return self.feast_data / "feature_store.yaml"

    @property
    def feast_definitions(self) -> Path:
        """The repo.py Feast's CLI imports: the definitions of ``run_config``."""
        return self.feast_data / "repo.py"

    @property
    def feast_registry(self) -> Path:
        """Feast's registry: written by `saviorrec features apply`, read by the service."""
        return self.feast_data / "registry.db"

    @property
    def feast_sqlite(self) -> Path:
        """The local profile's online store (sqlite)."""
        return self.feast_data / "online.db"

    # the live loop
    @property
    def event_inbox(self) -> Path:
        """Folder of event files (schema.EVENTS parquet) that the streaming item_stats job
        reads; a writer drops each file whole (write under a name starting with '.' or '_',
        which Spark skips, then rename)."""
        return self.root / "lake" / "stream" / "events"

    @property
    def item_stats_stream(self) -> StreamFiles:
        return StreamFiles(self.root / "lake" / "stream" / "item_stats")

    @property
    def replay_dir(self) -> Path:
        """`saviorrec replay`'s own run folder: the run as it stood at the replay's start
        (warm items only, a fresh online store, the stream's inbox and the processes' logs)."""
        return self.root / "lake" / "replay"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def metrics(self) -> Path:
        return self.root / "report" / "metrics.json"

    def stage_stamp(self, stage: str) -> Path:
        """JSON {fingerprint, finished, seconds} of the pipeline's last run of ``stage``."""
        return self.root / ".stages" / f"{stage}.json"


@dataclass(frozen=True)
class RankerFiles:
    """What training writes for one variant and seed (Lake.ranker)."""

    root: Path
    META: ClassVar[str] = "meta.json"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def meta(self) -> Path:
        """JSON: variant, seed, rqvae_version, val_auc, test_auc, model_config, history, ..."""
        return self.root / self.META

    @property
    def predictions(self) -> Path:
        """schema.PREDICTIONS of the test split."""
        return self.root / "predictions_test.parquet"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def best_weights(self) -> Path:
        return self.root / "checkpoints" / "best.weights.h5"

    @property
    def logs(self) -> Path:
        """TensorBoard logs."""
        return self.root / "logs"


@dataclass(frozen=True)
class ExportFiles:
    """An exported ranker (Lake.export, or any folder serving.model_dir names)."""

    root: Path

    @property
    def saved_model(self) -> Path:
        """TensorFlow's own file name for the graph of a SavedModel folder."""
        return self.root / "saved_model.pb"

    @property
    def meta(self) -> Path:
        """JSON: model_version, variant, seed, rqvae_version, signature, inputs, outputs, ..."""
        return self.root / "meta.json"

    @property
    def sample_request(self) -> Path:
        """A TF-Serving REST body built from real test rows."""
        return self.root / "sample_request.json"


@dataclass(frozen=True)
class StreamFiles:
    """The streaming job's own files (Lake.item_stats_stream): item statistics and user rows."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        """Spark's checkpoint of the query: which files each micro-batch read, which committed."""
        return self.root / "checkpoint"

    @property
    def counts(self) -> Path:
        """The job's state: (item_id, period, pv, clicks) of each micro-batch's good events, one
        parquet folder per batch id (``batch_id=N``), written once and atomically."""
        return self.root / "counts"

    @property
    def users(self) -> Path:
        """The user rows' state: for each user with events in micro-batch N, their full state
        after N (events, clicks, last event time, last ``sequences.max_len`` clicks), one parquet
        folder per batch id (``batch-<N>``), written once and atomically; a user's current
        state is their row in the latest folder that has one."""
        return self.root / "users"

    @property
    def quarantine(self) -> Path:
        """Malformed event files, moved here with a ``<name>.reason.json`` beside each."""
        return self.root / "quarantine"

    @property
    def bad_files(self) -> Path:
        """JSON {"files", "by_reason", "names"}: the quarantined files, counted."""
        return self.root / "bad_files.json"

    @property
    def progress(self) -> Path:
        """JSON of the last committed micro-batch: batch id, snapshot time, events, rows pushed."""
        return self.root / "progress.json"


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``final`` (file or folder)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if (final.is_dir() or (tmp.is_dir() and final.exists())) and not final.is_symlink():
            # a folder, or a file replaced by a folder (one builder writes a file, another a
            # folder of part files): move the old one aside, then rename (rename needs same kinds)
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_run_config(cfg: Config) -> Path:
    """Write the run's resolved configuration to ``Lake.run_config`` (atomically) and return
    its path. Loading it gives the same configuration (run.root made absolute)."""
    path = Lake.from_config(cfg).run_config
    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(cfg))
    return path


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
