"""The stage registry: every stage of the pipeline and every Spark job, in run order.

A :class:`Stage` names its entry point (the function that runs it, called with the run's
Config), what it reads and writes in the lake, the config sections that decide whether its
outputs are current, and the stages it runs after. The CLI, the pipeline runner
(``saviorrec run``) and the Spark runner all take their lists from here.

The contract imports no stage, so an entry point is written as its dotted name; the apps bind it
with an ordinary import (``saviorrec.pipeline.entry_point``, ``spark_jobs.runner``), which import
tools see, and a test checks that each binding is the function named here.

Lake artefacts are the names of :class:`saviorrec.lake.Lake` attributes; ``"spark:samples"``
stands for ``lake.spark("samples")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saviorrec.lake import Lake


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # dotted name of the function that runs the stage
    reads: tuple[str, ...] = ()  # Lake artefacts
    writes: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()  # config sections whose values decide if outputs are current
    after: tuple[str, ...] = ()  # stages whose outputs it reads
    doc: str = ""


def artefact_path(lake: Lake, artefact: str) -> Path:
    """The path of a registry artefact (``"items"``, ``"spark:samples"``) in ``lake``."""
    attribute, _, argument = artefact.partition(":")
    value = getattr(lake, attribute)
    return value(argument) if argument else value


SPARK_JOBS: tuple[Stage, ...] = (
    Stage("samples", "spark_jobs.samples.run", reads=("events", "items"),
          writes=("spark:samples", "spark:item_pv"),
          doc="labelled samples and the per-user time split; each item's train PV bucket"),
    Stage("coclick", "spark_jobs.coclick.run", reads=("spark:samples", "spark:item_pv"),
          writes=("spark:coclick", "spark:coclick_stats"), after=("samples",),
          doc="co-click item pairs of the train window"),
    Stage("item_stats", "spark_jobs.item_stats.run", reads=("spark:samples",),
          writes=("spark:item_stats",), after=("samples",),
          doc="daily point-in-time item snapshots"),
    Stage("sequences", "spark_jobs.sequences.run", reads=("spark:samples",),
          writes=("spark:sequences",), after=("samples",),
          doc="each sample's last clicks strictly before it, and the user's statistics"),
)
SPARK_JOB_NAMES: tuple[str, ...] = tuple(job.name for job in SPARK_JOBS)


def _union(jobs: tuple[Stage, ...], field: str) -> tuple[str, ...]:
    written = {w for job in jobs for w in job.writes}
    values = [v for job in jobs for v in getattr(job, field)]
    return tuple(dict.fromkeys(v for v in values if field == "writes" or v not in written))


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "saviorrec.datasets.prepare.prepare",
          writes=("events", "items", "oracle", "prepare_summary"), sections=("data", "synthetic"),
          doc="raw events and items from the source data (or the synthetic generator)"),
    Stage("spark", "spark_jobs.runner.run_jobs", reads=_union(SPARK_JOBS, "reads"),
          writes=_union(SPARK_JOBS, "writes"),
          sections=("labels", "split", "spark", "coclick", "stats", "sequences"),
          after=("prepare",), doc="the Spark jobs: " + ", ".join(SPARK_JOB_NAMES)),
    Stage("encode", "encoder_torch.pipeline.run_encoder",
          reads=("items", "spark:coclick", "spark:samples"),
          writes=("tower_cache", "off_the_shelf_embeddings", "encoder_checkpoint",
                  "encoder_embeddings", "encoder_version"),
          sections=("encoder",), after=("spark",),
          doc="SaviorEnc on co-click pairs; every item's embedding; Hit@K"),
    Stage("rqvae", "encoder_torch.rq_stage.run_rqvae",
          reads=("items", "events", "encoder_embeddings", "spark:coclick"),
          writes=("rqvae_checkpoint", "rqvae_codebooks", "rqvae_version", "item_multimodal"),
          sections=("rqvae",), after=("encode",),
          doc="the RQ-VAE; semantic ids into item_multimodal"),
    Stage("features", "feature_repo.store.apply_and_materialize",
          reads=("spark:item_stats", "spark:sequences", "item_multimodal"),
          writes=("feast_registry", "feast_data"), sections=("feast",), after=("spark", "rqvae"),
          doc="Feast: apply the definitions, materialize the online store"),
    Stage("training_set", "feature_repo.training.training_set",
          reads=("spark:samples", "spark:sequences", "spark:item_stats", "spark:item_pv",
                 "item_multimodal", "feast_registry"),
          writes=("training_dir",), sections=("feast", "sequences"), after=("features",),
          doc="the ranker's point-in-time training set (production profile: the Spark job "
              "spark_jobs/training_set.py, joined by saviorrec.pipeline.run_training_set)"),
    Stage("train", "tf_ranker.train.run_train",
          reads=("training_dir", "rqvae_codebooks", "rqvae_version"), writes=("ranker_root",),
          sections=("ranker",), after=("training_set",), doc="ranker variants x seeds"),
    Stage("evaluate", "tf_ranker.evaluate.run_evaluate",
          reads=("training_dir", "ranker_root", "oracle"), writes=("metrics",),
          sections=("ranker",), after=("train",), doc="AUC overall and per PV bucket"),
    Stage("export", "tf_ranker.export.run_export", reads=("ranker_root", "training_dir"),
          writes=("export_dir",), sections=("ranker",), after=("train",),
          doc="the SavedModel for TF-Serving and the service"),
    Stage("report", "saviorrec.report.write_report", reads=("metrics",),
          writes=("report_dir",), after=("evaluate", "export"),
          doc="report.md, figures and metrics.json"),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
