"""``saviorrec``: the command line over every stage.

Each command is a thin shell: it loads the config and calls one function, the registry stage's
(saviorrec.stages, bound by saviorrec.pipeline.entry_point) or the service's, imported only then
(TensorFlow, torch and Spark start slowly and a GPU host may lack TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from saviorrec.config import (
    REPLAY_USER_FEATURES,
    REPO_ROOT,
    Config,
    ConfigError,
    ServingConfig,
    load_config,
)
from saviorrec.logs import configure_logging
from saviorrec.pipeline import entry_point, run_training_set
from saviorrec.stages import SPARK_JOB_NAMES, STAGE_NAMES

log = logging.getLogger("saviorrec")

DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "movielens.yaml")
QUICK_OVERLAY = str(REPO_ROOT / "configs" / "quick.yaml")


def _config(args: argparse.Namespace) -> Config:
    overlays = (QUICK_OVERLAY,) if getattr(args, "quick", False) else ()
    cfg = load_config(args.config, overlays)
    if overlays:  # a quick run has its own folder: it never overwrites the full run's outputs
        cfg = cfg.with_overrides(run={"name": f"{cfg.run.name}-quick",
                                      "root": f"{cfg.run.root.rstrip('/')}-quick"})
    if getattr(args, "profile", None):
        cfg = cfg.with_overrides(feast={"profile": args.profile})
    return cfg


def _print(result: Any) -> None:
    if result is not None:
        print(json.dumps(result, indent=2, default=str))


# --- command handlers ---------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> Any:
    return entry_point("prepare")(_config(args))


def cmd_spark(args: argparse.Namespace) -> Any:
    jobs = list(SPARK_JOB_NAMES) if args.job == "all" else [args.job]
    return entry_point("spark")(_config(args), jobs, master=args.master)


def cmd_stream(args: argparse.Namespace) -> Any:
    """The streaming job (item statistics and user rows) with its Feast sinks (joined here: no
    stage imports another)."""
    from feature_repo.stream_sink import item_stats_sink, user_rows_sink
    from spark_jobs import item_stats_stream
    from spark_jobs.session import build_session

    cfg = _config(args)
    sink, user_sink = item_stats_sink(cfg), user_rows_sink(cfg)
    spark = build_session(cfg.spark, args.master)
    try:
        return item_stats_stream.run(spark, cfg, sink, inbox=args.events,
                                     available_now=args.available_now, user_sink=user_sink)
    finally:
        spark.stop()


def cmd_features(args: argparse.Namespace) -> Any:
    cfg = _config(args)
    if args.action == "training-set":
        return run_training_set(cfg)
    from feature_repo.store import apply, materialize  # the features stage, one step at a time

    return apply(cfg) if args.action == "apply" else materialize(cfg, args.start, args.end)


def cmd_encode(args: argparse.Namespace) -> Any:
    return entry_point("encode")(_config(args))


def cmd_rqvae(args: argparse.Namespace) -> Any:
    return entry_point("rqvae")(_config(args))


def cmd_train(args: argparse.Namespace) -> Any:
    cfg = _config(args)
    variants = args.variant or list(cfg.ranker.variants)
    seeds = args.seed if args.seed is not None else list(cfg.ranker.seeds)
    train = entry_point("train")
    return [train(cfg, variant=v, seed=s) for v in variants for s in seeds]


def cmd_evaluate(args: argparse.Namespace) -> Any:
    return entry_point("evaluate")(_config(args), variants=args.variant)


def cmd_export(args: argparse.Namespace) -> Any:
    return entry_point("export")(_config(args), variant=args.variant, seed=args.seed)


def cmd_serve(args: argparse.Namespace) -> Any:
    from serving.app import serve

    cfg = _config(args)
    if cfg.serving.workers > 1:  # each worker loads its own onboarder (serve_worker_app)
        return serve(cfg, host=args.host, port=args.port,
                     worker_factory="saviorrec.cli:serve_worker_app")
    return serve(cfg, host=args.host, port=args.port, onboard=_service_onboard(cfg))


def _service_onboard(cfg: Config) -> Any:
    """POST /items' onboarder (onboard.in_service), None without it."""
    onboarder = _onboarder(cfg) if cfg.onboard.in_service else None
    return onboarder.add_records if onboarder else None


def serve_worker_app() -> Any:
    """One worker process of `saviorrec serve` with serving.workers > 1 (a uvicorn factory)."""
    from serving.app import worker_app

    return worker_app(make_onboard=_service_onboard)


def _onboarder(cfg: Config, *, required: bool = False) -> Any:
    """The run's Onboarder for the served model; the service runs without POST /items (a
    warning says why) when it cannot be loaded, ``items add`` fails."""
    from serving.service import model_dir

    try:  # a [serve]-only host has no torch: the service then runs without POST /items
        from saviorrec.onboard import Onboarder, served_rqvae_version

        return Onboarder.load(cfg, served_version=served_rqvae_version(model_dir(cfg)))
    except (ImportError, FileNotFoundError, ValueError, RuntimeError) as e:
        if required:
            raise
        log.warning("POST /items is off: cannot load the onboarding models: %s", e)
        return None


def cmd_items(args: argparse.Namespace) -> Any:
    from pathlib import Path

    return _onboarder(_config(args), required=True).add_file(Path(args.file))


def cmd_replay(args: argparse.Namespace) -> Any:
    """The held-back period through the live system; writes the results file's "replay" key."""
    from pathlib import Path

    from saviorrec.metrics import update_metrics
    from saviorrec.replay import RESULTS, replay, replay_entry
    from serving.service import model_dir

    cfg = _config(args)
    result = replay(cfg, model_dir(cfg), max_test_rows=args.max_test_rows, port=args.port,
                    rows=args.rows, online_store=args.online_store,
                    user_features=tuple(args.user_features))
    path = Path(args.results) if args.results else RESULTS
    previous = json.loads(path.read_text()).get("replay") if path.exists() else None
    update_metrics(path, "replay", replay_entry(previous, result))
    return {k: v for k, v in result.items() if k != "differing_rows"}


def cmd_run(args: argparse.Namespace) -> Any:
    from saviorrec.pipeline import run_pipeline

    return run_pipeline(_config(args), full_grid=args.full_grid, backend=args.backend,
                        force=args.force, only=args.only)


def cmd_report(args: argparse.Namespace) -> Any:
    return entry_point("report")(_config(args))


# --- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saviorrec",
        description="Cold-start CTR prediction after SaviorRec (arXiv 2508.01375). "
        "Stages in pipeline order: data, spark, encode, rqvae, features, train, evaluate, "
        "export, serve; `run` does them all.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], Any], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
        p.add_argument("--quick", action="store_true", help="apply configs/quick.yaml (a subsample)")
        p.set_defaults(handler=handler)
        return p

    p = add("data", cmd_data, "prepare raw/events.parquet and raw/items.parquet in the lake")
    p.add_argument("action", choices=["prepare"])

    p = add("spark", cmd_spark, "run a PySpark feature job (samples, coclick, item_stats, sequences) or all")
    p.add_argument("job", choices=[*SPARK_JOB_NAMES, "all"])
    p.add_argument("--master", default=None, help="Spark master URL (default: from config)")

    p = add("stream", cmd_stream, "Spark Structured Streaming: item statistics and user rows "
            "from a folder of event files, pushed to the online store (docs/live.md)")
    p.add_argument("job", choices=["item-stats"])
    p.add_argument("--events", default=None,
                   help="folder of event parquet files (default: the run's lake/stream/events)")
    p.add_argument("--available-now", action="store_true",
                   help="process the files there now, then stop (default: run until killed)")
    p.add_argument("--master", default=None, help="Spark master URL (default: from config)")
    p.add_argument("--profile", choices=["local", "production"], default=None)

    p = add("features", cmd_features, "Feast: apply the repo, materialize online, build the training set")
    p.add_argument("action", choices=["apply", "materialize", "training-set"])
    p.add_argument("--start", default=None, help="materialize start (ISO date; default: first event)")
    p.add_argument("--end", default=None, help="materialize end (ISO date; default: now)")
    p.add_argument("--profile", choices=["local", "production"], default=None)

    add("encode", cmd_encode, "train SaviorEnc on co-click pairs and embed every item")
    add("rqvae", cmd_rqvae, "train the RQ-VAE and write semantic ids into item_multimodal")

    p = add("train", cmd_train, "train ranker variants and seeds")
    p.add_argument("--variant", action="append", help="variant (repeatable; default: config)")
    p.add_argument("--seed", type=int, action="append", help="seed (repeatable; default: config)")

    p = add("evaluate", cmd_evaluate, "AUC overall and per PV bucket with intervals into metrics.json")
    p.add_argument("--variant", action="append")

    p = add("export", cmd_export, "write a TF SavedModel (serving_default) of a trained ranker")
    p.add_argument("--variant", default="full")
    p.add_argument("--seed", type=int, default=0)

    serving = ServingConfig()
    p = add("serve", cmd_serve, "HTTP ranking service: Feast online features + SavedModel; "
            "POST /rank, GET /healthz /readyz /metrics /openapi.json (docs/serving.md)")
    p.add_argument("--host", default=None,
                   help=f"address to listen on (default: the config's serving.host, "
                   f"{serving.host} if unset; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None,
                   help=f"TCP port (default: the config's serving.port, {serving.port} if "
                   "unset; TF-Serving's are 8500 gRPC and 8501 REST)")
    p.add_argument("--profile", choices=["local", "production"], default=None,
                   help="online store: local reads the run's sqlite file, production the "
                   "Redis in $feast.redis_env (default: the config's feast.profile)")

    p = add("items", cmd_items, "onboard new items into a finished run: embed them with its "
            "frozen encoder and RQ-VAE and push them to the online and offline store")
    p.add_argument("action", choices=["add"])
    p.add_argument("file", help="CSV or JSONL: movieId (or item_id), title, genres, overview, "
                   "poster_path (docs/serving.md)")
    p.add_argument("--profile", choices=["local", "production"], default=None)

    p = add("replay", cmd_replay, "replay a finished run's held-back events through the live "
            "system (stream, onboarding, service) and compare online with offline AUC")
    p.add_argument("--max-test-rows", type=int, default=None,
                   help="test rows scored, the first in time (default: replay.max_test_rows; 0: all)")
    p.add_argument("--rows", choices=["first", "new_items"], default="first",
                   help="test rows scored: the first in time (writes 'replay'), or only those "
                   "of items without a training event (writes 'replay.new_items')")
    p.add_argument("--port", type=int, default=None, help="the replay service's port")
    p.add_argument("--user-features", nargs="+", default=list(REPLAY_USER_FEATURES),
                   choices=REPLAY_USER_FEATURES, help="user-feature modes scored in the one pass "
                   "(per_row always; default: all; docs/live.md)")
    p.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite",
                   help="the replay's own online store: a fresh sqlite file (local profile) or "
                   "a redis-server it starts (production profile; redis-server on PATH)")
    p.add_argument("--results", default=None,
                   help="JSON file whose 'replay' key is written (default: "
                   "benchmarks/results/live_coldstart.json)")

    p = add("run", cmd_run, "the whole pipeline, skipping stages whose outputs are current")
    p.add_argument("--full-grid", action="store_true",
                   help="the paper's grid: also Table 4's text-only and image-only encoders "
                   "(encoder.ablations), Table 5's MBA sizes and Fig. 4's feature drops")
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                   help="Keras backend for the ranker stage")
    p.add_argument("--profile", choices=["local", "production"], default=None)
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.add_argument("--only", action="append", choices=STAGE_NAMES, metavar="STAGE",
                   help=f"run only these stages (repeatable): {', '.join(STAGE_NAMES)}")

    add("report", cmd_report, "write report/ (report.md, figures, metrics.json) from a finished run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        _print(args.handler(args))
    except ConfigError as e:
        print(f"saviorrec: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        # StageError (a RuntimeError) already names the failed stage and its cause
        print(f"saviorrec {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
