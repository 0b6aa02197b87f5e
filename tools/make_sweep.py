"""Configs for a one-key hyperparameter sweep over one run's training set, and its summary.

    # write runs/sweep/<name>.yaml, one per value, each with its own run.root sharing the base
    # run's training set and RQ-VAE (symbolic links), and print their paths joined by commas:
    python tools/make_sweep.py configs/movielens.yaml ranker.mba_codebook_scale 1,3,10
    # train them (e.g. on a GPU host: tools/gpu_train_grid.sh takes the comma list), then:
    python tools/make_sweep.py configs/movielens.yaml ranker.mba_codebook_scale 1,3,10 \\
        --summarize --out sweep.json

A key upstream of the ranker (any section but ``ranker``, e.g. ``coclick.min_support``) changes
the training set itself: each value's run then shares only the base run's tower-feature cache
(keyed by item content, so the frozen towers are not run again) and builds its own lake with
``saviorrec run --config P --only prepare --only spark --only encode --only rqvae --only features
--only training_set`` before training; the summary adds each run's encoder Hit@K (validation and
test) from its lake's metrics. ``--set section.field=value`` (repeatable) fixes other keys in
every value's config, e.g. ``--set encoder.ablations=true`` to add the ablation encoders.
Whatever the key, a run shares the base run's training set and RQ-VAE exactly when its config
differs from the base run's only in keys the training set does not depend on
(``NOT_IN_TRAINING_SET``) and the base run has them: the incumbent of an upstream sweep then
builds nothing (and has no encoder figures of its own), and a ranker sweep with an upstream
``--set`` builds its own lakes. The command prints the runs that must build theirs.

The summary holds each value's validation and test AUC per variant and seed (the metas) and the
value chosen, by VALIDATION AUC only (test AUC is shown for the record, never used to choose),
and, for a run that `saviorrec evaluate --config P` evaluated, full's paired test gap over each
other variant (``test_full_minus_points``, also for the record).
List the current setting first: it is the incumbent. Each later value gets its validation AUC
minus the first value's, run by run (same variant and seed), whether it is ahead in every run,
and the paired gain: mean, standard error and their ratio t over those runs. A later value
replaces the first only when its mean gain exceeds GAIN_SE standard errors (so one run, whose
error is unknown, never does); among the values that do, the highest mean validation AUC is
chosen. A value with a run missing (its training failed, e.g. collapsed) is listed with those
runs and not chosen; when that is the first value, the best mean of the others is chosen.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saviorrec.config import Config, load_config
from saviorrec.lake import Lake

# Lake folders (attributes of saviorrec.lake.Lake) a value's run links to the base run's.
SHARED = ("training_dir", "rqvae_dir")  # read by `saviorrec train`, never written
# Shared by sweeps of upstream keys: frozen-tower features, keyed by tower id and item content
# (encoder_torch/cache.py), so a run computes only what the base run lacks.
SHARED_UPSTREAM = ("cache",)
# Sections and keys that change what a run reports or how it trains, not its training set and
# RQ-VAE. encoder.ablations only adds the text-only and image-only encoders, each trained after
# reseeding (encoder_torch/pipeline.py): with it off, the lake's items.parquet was byte-identical.
NOT_IN_TRAINING_SET = ("run", "ranker", "serving", "encoder.ablations")
BUILD_LAKE = ("saviorrec run --config P --only prepare --only spark --only encode --only rqvae "
              "--only features --only training_set")
# A value replaces the incumbent (the first value) only when its paired validation gain is larger
# than this many standard errors: seed-to-seed noise on MovieLens is 0.05-0.15 AUC points, the
# size of many gains a plain "highest mean" would take.
GAIN_SE = 2.0


def parse_value(text: str) -> Any:
    """YAML scalar: 3 -> int, 0.5 -> float, true -> bool, else the string."""
    return yaml.safe_load(text)


def sweep_name(key: str, value: Any) -> str:
    return f"{key.rsplit('.', 1)[-1]}-{value}".replace("/", "_")


def split_key(key: str) -> tuple[str, str]:
    section, _, field = key.partition(".")
    if not field:
        raise SystemExit(f"key {key!r}: expected section.field, e.g. ranker.lr")
    return section, field


def is_upstream(key: str) -> bool:
    """Whether ``key`` changes the training set (any section but ``ranker``)."""
    return split_key(key)[0] != "ranker"


def shared(run_dir: Path, name: str) -> Path:
    """The Lake folder ``name`` (e.g. ``training_dir``) of the run in ``run_dir``."""
    return getattr(Lake(run_dir), name)


def shared_paths(key: str) -> tuple[str, ...]:
    """What the base run must have for a sweep of ``key``: the training set for a ranker key,
    the tower-feature cache for a key upstream of it."""
    return SHARED_UPSTREAM if is_upstream(key) else SHARED


def write_configs(base: Path, key: str, values: list[Any], root: Path,
                  fixed: dict[str, Any] | None = None) -> list[Path]:
    """One YAML per value: ``base`` with ``fixed`` ({section.field: value}) and ``key`` set and
    run.root under ``root``."""
    raw = yaml.safe_load(base.read_text())
    base_cfg = load_config(base)
    base_root = base_cfg.run_dir()
    shared_here = shared_paths(key)  # validates the key
    missing = [str(shared(base_root, p).relative_to(base_root)) for p in shared_here
               if not shared(base_root, p).exists()]
    if missing:
        raise SystemExit(f"{base_root}: {', '.join(missing)} missing (run the pipeline first)")
    base_has_lake = all(shared(base_root, p).exists() for p in SHARED)
    if key in (fixed or {}):
        raise SystemExit(f"--set {key}: that is the swept key")
    paths = []
    for value in values:
        name = sweep_name(key, value)
        doc = {**raw, "run": {**raw.get("run", {}), "root": str(root / name)}}
        for k, v in [*(fixed or {}).items(), (key, value)]:
            sec, fld = split_key(k)
            doc[sec] = {**doc.get(sec, {}), fld: v}
        path = root / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=True))
        cfg = load_config(path)  # validates the value
        run_dir = cfg.run_dir()
        # Its training set is the base run's unless the key or a --set key changes it.
        same_lake = base_has_lake and training_set_keys(cfg) == training_set_keys(base_cfg)
        for name in SHARED if same_lake else SHARED_UPSTREAM:
            link, target = shared(run_dir, name), shared(base_root, name)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists() and target.exists():
                link.symlink_to(target.resolve(), target_is_directory=True)
        paths.append(path)
    return paths


def training_set_keys(cfg: Config) -> dict[str, Any]:
    """The config without ``NOT_IN_TRAINING_SET``: two runs equal here build the same lake."""
    keys = cfg.model_dump(mode="json")
    for name in NOT_IN_TRAINING_SET:
        section, _, field = name.partition(".")
        if field:
            keys[section].pop(field)
        else:
            keys.pop(section)
    return keys


def needs_lake(path: Path) -> bool:
    """Whether a value's run must build its lake before training (it shares no training set)."""
    return not Lake.from_config(load_config(path)).training_dir.exists()


def summarize(paths: list[Path], key: str, values: list[Any]) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for path, value in zip(paths, values, strict=True):
        cfg = load_config(path)
        rows = [json.loads(m.read_text()) for m in Lake.from_config(cfg).ranker_metas()]
        runs[str(value)] = {
            "config": str(path),
            "mean_val_auc": round(sum(r["val_auc"] for r in rows) / len(rows), 5) if rows else None,
            "mean_test_auc": round(sum(r["test_auc"] for r in rows) / len(rows), 5) if rows else None,
            "trained": [{k: r[k] for k in ("variant", "seed", "val_auc", "test_auc", "epochs",
                                          "best_epoch")} for r in rows],
        }
        metrics = lake_metrics(cfg)
        if is_upstream(key):  # each value built its own lake: say how its encoder did
            runs[str(value)]["encoder"] = encoder_metrics(cfg, metrics)
        gaps = full_minus_on_test(metrics)
        if gaps:  # `saviorrec evaluate` ran on this value's run
            runs[str(value)]["test_full_minus_points"] = gaps
    _compare_with_first(runs)
    # A run without meta.json failed (e.g. tf_ranker.train.TrainingCollapsed): its value is
    # not comparable on the others' runs, and it is not chosen.
    every = set().union(*(_val_by_run(r) for r in runs.values()))
    for run in runs.values():
        missing = every - set(_val_by_run(run))
        if missing:
            run["missing_runs"] = sorted(missing)
    return {"key": key, "selection": SELECTION, "chosen": choose(runs), "runs": runs}


def lake_metrics(cfg: Config) -> dict[str, Any]:
    """A run's metrics.json (what its evaluate and encode stages wrote), {} before they ran."""
    path = Lake.from_config(cfg).metrics
    return json.loads(path.read_text()) if path.exists() else {}


def encoder_metrics(cfg: Config, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The encoder's Hit@K (validation, test) and co-click pair count from a run's metrics."""
    encoder = metrics.get("encoder")
    if not encoder:
        return None
    key = f"hit_at_{cfg.encoder.hit_k}"
    return {f"{key}_valid": encoder.get(f"{key}_valid"), f"{key}_test": encoder.get(key),
            "coclick_pairs": encoder.get("run", {}).get("coclick_pairs")}


def full_minus_on_test(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Test AUC of full minus each other variant, in points, with the mean per-seed 95% paired
    bootstrap interval (``ranker.full_minus`` of `saviorrec evaluate`): for the record, never
    used to choose."""
    against = metrics.get("ranker", {}).get("full_minus")
    if not against:
        return None
    return {v: {"diff": round(100 * g["diff"], 2), "ci95": [round(100 * x, 2) for x in g["ci95"]]}
            for v, g in against.items()}


SELECTION = (f"the first value (the incumbent) unless a later one beats it on validation AUC by "
             f"a paired mean gain > {GAIN_SE:g} standard errors over the same variants and seeds; "
             "then the highest mean validation AUC among those that do. Values with a run "
             "missing are never chosen")


def choose(runs: dict[str, Any]) -> str | None:
    """The value chosen by :data:`SELECTION` from :func:`summarize`'s runs (in sweep order)."""
    ok = {v: r for v, r in runs.items()
          if r["mean_val_auc"] is not None and "missing_runs" not in r}
    if not ok:
        return None
    first = next(iter(runs))
    if first not in ok:  # the incumbent failed: nothing to beat
        return max(ok, key=lambda v: ok[v]["mean_val_auc"])
    better = [v for v, r in ok.items() if v != first and r["gain_vs_first"]["t"] is not None
              and r["gain_vs_first"]["t"] > GAIN_SE]
    return max(better, key=lambda v: ok[v]["mean_val_auc"]) if better else first


def _val_by_run(run: dict[str, Any]) -> dict[str, float]:
    """Validation AUC of one value's trained runs, by "variant/seedN"."""
    return {f"{t['variant']}/seed{t['seed']}": t["val_auc"] for t in run["trained"]}


def _compare_with_first(runs: dict[str, Any]) -> None:
    """Add to each value after the first its validation AUC minus the first value's, in points,
    run by run (same variant and seed), and whether it is ahead in every such run: a mean gain
    that some runs contradict is weaker evidence than one they all share."""
    if not runs:
        return
    first, *others = runs.values()
    reference = _val_by_run(first)
    for run in others:
        diffs = {k: round(100 * (v - reference[k]), 3) for k, v in _val_by_run(run).items()
                 if k in reference}
        run["val_auc_points_vs_first"] = diffs
        run["ahead_of_first_in_every_run"] = bool(diffs) and min(diffs.values()) > 0
        run["gain_vs_first"] = paired_gain(list(diffs.values()))


def paired_gain(diffs: list[float]) -> dict[str, float | int | None]:
    """Mean, standard error (sample sd / sqrt(n)) and t = mean / se of paired differences;
    se and t are None for fewer than two runs, t is None when every difference is equal."""
    n = len(diffs)
    mean = sum(diffs) / n if n else None
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n >= 2 else None
    return {"n": n, "mean": None if mean is None else round(mean, 4),
            "se": None if se is None else round(se, 4),
            "t": round(mean / se, 2) if se else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("key", help="section.field, e.g. ranker.mba_codebook_scale")
    p.add_argument("values", help="comma separated")
    p.add_argument("--root", type=Path, default=Path("runs/sweep"))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="fix another key in every value's config (repeatable)")
    p.add_argument("--summarize", action="store_true", help="summarise the trained sweep")
    p.add_argument("--out", type=Path, help="--summarize: JSON path (default: stdout)")
    args = p.parse_args(argv)
    values = [parse_value(v) for v in args.values.split(",")]
    fixed = {}
    for item in args.set:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        fixed[k] = parse_value(v)
    if not args.summarize:
        paths = write_configs(args.config, args.key, values, args.root, fixed)
        to_build = [str(x) for x in paths if needs_lake(x)]
        if to_build:
            print(f"{args.key} is upstream of the ranker: build the training set of "
                  f"{', '.join(to_build)} first ({BUILD_LAKE})", file=sys.stderr)
        print(",".join(str(x) for x in paths))
        return 0
    paths = [args.root / f"{sweep_name(args.key, v)}.yaml" for v in values]
    summary = summarize(paths, args.key, values)
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
