"""``saviorrec run``: every stage of the registry (saviorrec.stages) in order, resumable.

:func:`entry_point` binds each registry stage to its function with an ordinary import, made
when the stage runs (TensorFlow, torch and Spark start slowly, and a GPU host may lack
TensorFlow); the CLI calls stages through it too. A stage is skipped when its stamp says it already ran with the same configuration and after
every stage it depends on; otherwise it runs and writes a new stamp. A failure names the stage
and its cause. Per-stage seconds go to metrics.json (``timings.<stage>_s``), with the versions
of the code and config, once a stage has finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saviorrec import stages as registry
from saviorrec.config import REPO_ROOT, Config
from saviorrec.lake import Lake, atomic_path, write_run_config
from saviorrec.logs import configure_logging
from saviorrec.metrics import update_metrics

log = logging.getLogger("saviorrec.pipeline")


class StageError(RuntimeError):
    """A stage failed; the message names it and the cause."""


@dataclass(frozen=True)
class Stage:
    """A registry stage (what it is) with the call that runs it in this pipeline."""

    spec: registry.Stage
    run: Callable[[Config], Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sections(self) -> tuple[str, ...]:
        return self.spec.sections

    @property
    def after(self) -> tuple[str, ...]:
        return self.spec.after


def entry_point(stage: str) -> Callable[..., Any]:
    """The function that runs registry stage ``stage`` (its ``entry``), imported now."""
    if stage == "prepare":
        from saviorrec.datasets.prepare import prepare
        return prepare
    if stage == "spark":
        from spark_jobs.runner import run_jobs
        return run_jobs
    if stage == "encode":
        from encoder_torch.pipeline import run_encoder
        return run_encoder
    if stage == "rqvae":
        from encoder_torch.rq_stage import run_rqvae
        return run_rqvae
    if stage == "features":
        from feature_repo.store import apply_and_materialize
        return apply_and_materialize
    if stage == "training_set":
        from feature_repo.store import training_set
        return training_set
    if stage == "train":
        from tf_ranker.train import run_train
        return run_train
    if stage == "evaluate":
        from tf_ranker.evaluate import run_evaluate
        return run_evaluate
    if stage == "export":
        from tf_ranker.export import run_export
        return run_export
    if stage == "report":
        from saviorrec.report import write_report
        return write_report
    raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(registry.STAGE_NAMES)}")


def run_training_set(cfg: Config) -> dict[str, Any]:
    """The training_set stage on ``cfg.feast.training_engine``: the registry's local builder, or
    (production) the Spark job for the samples and feature_repo's item table, joined here
    because no stage imports another."""
    if cfg.feast.training_engine == "local":
        return entry_point("training_set")(cfg)
    from feature_repo.training import build_training_items
    from spark_jobs.training_set import run as build_on_spark

    lake = Lake.from_config(cfg)
    if not lake.item_multimodal.exists():  # fail before the Spark job, not after it
        raise FileNotFoundError(f"item_multimodal: {lake.item_multimodal} does not exist "
                                "(run the stage that writes it)")
    report = build_on_spark(cfg)
    report["items"] = build_training_items(cfg, set(report.pop("seen_items")))
    return report


def _train_all(cfg: Config, *, variants: tuple[str, ...], backend: str | None) -> Any:
    """Train every variant x seed. Another Keras backend than this process's runs in a child
    process (the backend is fixed when keras is first imported)."""
    current = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend and backend != current:
        cmd = [sys.executable, "-m", "saviorrec.pipeline", "--train-child", _config_json(cfg)]
        for v in variants:
            cmd += ["--variant", v]
        env = {**os.environ, "KERAS_BACKEND": backend}
        subprocess.run(cmd, check=True, env=env)
        return {"backend": backend, "variants": list(variants)}
    train = entry_point("train")
    return [train(cfg, variant=v, seed=s) for v in variants for s in cfg.ranker.seeds]


def _config_json(cfg: Config) -> str:
    return json.dumps(cfg.model_dump(mode="json"))


def build_stages(
    *, full_grid: bool = False, backend: str | None = None
) -> list[Stage]:
    def variants_of(cfg: Config) -> tuple[str, ...]:
        extra = ("full_mba32", "full_mba16", "full_mba8", "no_id", "no_stats", "no_mm")
        return tuple(cfg.ranker.variants) + (extra if full_grid else ())

    calls: dict[str, Callable[[Config], Any]] = {
        "spark": lambda cfg: entry_point("spark")(cfg, list(registry.SPARK_JOB_NAMES)),
        "training_set": run_training_set,
        "train": lambda cfg: _train_all(cfg, variants=variants_of(cfg), backend=backend),
        "evaluate": lambda cfg: entry_point("evaluate")(cfg, list(variants_of(cfg))),
        "export": lambda cfg: entry_point("export")(cfg, variant="full", seed=cfg.ranker.seeds[0]),
    }

    def plain(name: str) -> Callable[[Config], Any]:
        return lambda cfg: entry_point(name)(cfg)

    return [Stage(spec, calls.get(spec.name) or plain(spec.name)) for spec in registry.STAGES]


# --- stamps -------------------------------------------------------------------------------------
def _stamp_path(lake: Lake, name: str) -> Path:
    return lake.stage_stamp(name)


def _fingerprint(cfg: Config, stage: Stage, extra: dict[str, Any]) -> str:
    dumped = cfg.model_dump(mode="json")
    payload = {s: dumped[s] for s in stage.sections} | extra
    if stage.name == "prepare":
        payload["source_dir"] = str(cfg.source_dir())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _read_stamp(lake: Lake, name: str) -> dict[str, Any] | None:
    path = _stamp_path(lake, name)
    return json.loads(path.read_text()) if path.exists() else None


def _is_current(lake: Lake, stage: Stage, fingerprint: str) -> bool:
    stamp = _read_stamp(lake, stage.name)
    if stamp is None or stamp["fingerprint"] != fingerprint:
        return False
    for dep in stage.after:
        dep_stamp = _read_stamp(lake, dep)
        if dep_stamp is None or dep_stamp["finished"] > stamp["finished"]:
            return False
    return True


def _write_stamp(lake: Lake, stage: Stage, fingerprint: str, seconds: float) -> None:
    path = _stamp_path(lake, stage.name)
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps({"fingerprint": fingerprint, "finished": time.time(), "seconds": seconds})
        )


# --- runner -------------------------------------------------------------------------------------
def run_pipeline(
    cfg: Config,
    *,
    full_grid: bool = False,
    backend: str | None = None,
    force: bool = False,
    only: list[str] | None = None,
) -> dict[str, Any]:
    if full_grid:  # the paper's grid: Table 4's text-only and image-only encoders too
        cfg = cfg.with_overrides(encoder={"ablations": True})
    lake = Lake.from_config(cfg)
    write_run_config(cfg)  # <run>/config.yaml: the run describes itself, --quick included
    stages = build_stages(full_grid=full_grid, backend=backend)
    names = [s.name for s in stages]
    for name in only or []:
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; stages are {', '.join(names)}")
    summary: dict[str, Any] = {"run_dir": str(lake.root), "stages": {}}
    t_all = time.monotonic()
    for i, stage in enumerate(stages, 1):
        if only and stage.name not in only:
            continue
        fingerprint = _fingerprint(cfg, stage, {"full_grid": full_grid})
        prefix = f"[{i}/{len(stages)}] {stage.name}"
        if not force and not only and _is_current(lake, stage, fingerprint):
            log.info("%s: outputs are current, skipped", prefix)
            summary["stages"][stage.name] = "skipped (current)"
            continue
        log.info("%s: running", prefix)
        t0 = time.monotonic()
        try:
            stage.run(cfg)
        except Exception as e:  # re-raised with the stage name
            raise StageError(f"stage {stage.name!r} failed: {type(e).__name__}: {e}") from e
        seconds = time.monotonic() - t0
        _write_stamp(lake, stage, fingerprint, seconds)
        # with the stage's results: a run that fails before any stage finishes leaves no
        # metrics.json, never one holding nothing but versions
        _record_versions(cfg, lake)
        update_metrics(lake.metrics, f"timings.{stage.name}_s", round(seconds, 2))
        summary["stages"][stage.name] = f"ran in {seconds:.1f} s"
        log.info("%s: done in %.1f s", prefix, seconds)
    summary["total_s"] = round(time.monotonic() - t_all, 1)
    log.info("pipeline finished in %.1f s; report: %s", summary["total_s"], lake.report_dir)
    return summary


def _record_versions(cfg: Config, lake: Lake) -> None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    update_metrics(lake.metrics, "versions.code", commit)
    update_metrics(lake.metrics, "versions.config", hashlib.sha256(_config_json(cfg).encode()).hexdigest()[:12])
    update_metrics(lake.metrics, "versions.python", platform.python_version())
    update_metrics(lake.metrics, "machine", f"{platform.machine()}, {os.cpu_count()} cores")


def _train_child(argv: list[str]) -> None:
    """Entry of the child process that trains under another Keras backend."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--train-child", required=True)
    p.add_argument("--variant", action="append", required=True)
    args = p.parse_args(argv)
    cfg = Config.model_validate(json.loads(args.train_child))
    _train_all(cfg, variants=tuple(args.variant), backend=None)


if __name__ == "__main__":
    configure_logging()
    _train_child(sys.argv[1:])
