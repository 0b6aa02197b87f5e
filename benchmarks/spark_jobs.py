"""Benchmark of the Spark feature jobs, with duckdb doing the same aggregations as a yardstick.

For each size: prepare the data (MovieLens ml-latest-small, or seeded synthetic events of N
rows), run all four jobs in a fresh process (``python -m spark_jobs.runner``, Spark start-up
included in the wall time), then compute item_stats and co-click pairs (with PMI and top-k) in
duckdb from the same samples table and check that both engines give the same tables, by value:
each sorted by its keys and compared column by column (floats within 1e-6; item_stats on the
columns duckdb computes: pv, clicks, pv_recent, clicks_recent; coclick on all five), with the
differing columns, if any, named in ``value_comparison``.

    .venv/bin/python benchmarks/spark_jobs.py --sizes ml,1M         # what we ran
    .venv/bin/python benchmarks/spark_jobs.py --sizes ml,1M,10M     # + the 10M target

Writes benchmarks/results/spark_jobs.json (device, versions, command, date, numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pyspark
import yaml
from _bench_common import table_differences

from saviorrec.config import REPO_ROOT, Config, load_config
from saviorrec.lake import Lake

TARGETS = {"ml_all_jobs_s": 90.0, "10M_all_jobs_s": 600.0, "scaling_10M_over_1M": 12.0}


def parse_size(text: str) -> int | str:
    text = text.strip()
    if text == "ml":
        return "ml"
    scale = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("kM")) * scale)


def size_config(size: int | str, root: Path, master: str) -> Config:
    base = load_config(REPO_ROOT / "configs" / "movielens.yaml")
    spark = {"master": master, "driver_memory": "3g", "shuffle_partitions": 8}
    run = {"root": str(root), "name": f"bench-{size}"}
    if size == "ml":
        return base.with_overrides(run=run, spark=spark)
    n = int(size)
    return base.with_overrides(
        run=run, spark=spark, data={"source": "synthetic"},
        synthetic={"n_events": n, "n_users": max(5_000, n // 100), "n_items": max(5_000, n // 200),
                   "text_fraction": 0.0, "image_fraction": 0.0, "max_images": 0},
    )


def run_spark(cfg: Config, config_file: Path) -> dict[str, Any]:
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "spark_jobs.runner", "--config", str(config_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"spark jobs failed:\n{proc.stderr[-4000:]}")
    result, _ = json.JSONDecoder().raw_decode(proc.stdout, proc.stdout.index("{"))
    return {"wall_seconds_incl_startup": round(wall, 2), **result}


def duckdb_item_stats(con: duckdb.DuckDBPyConnection, samples: str, out: str, window: int) -> int:
    day = "CAST(floor(epoch_us(event_timestamp) / 86400e6) AS BIGINT)"
    frame = "OVER (PARTITION BY item_id ORDER BY day RANGE BETWEEN {} PRECEDING AND 1 PRECEDING)"
    con.execute(f"""
        COPY (
        WITH daily AS (SELECT item_id, {day} AS day, count(*) AS pv, sum(label) AS clicks
                       FROM read_parquet('{samples}') GROUP BY ALL),
        marks AS (SELECT item_id, day + 1 AS day FROM daily
                  UNION SELECT item_id, day + {window} + 1 FROM daily),
        timeline AS (SELECT item_id, day, sum(pv) AS pv_day, sum(clicks) AS clicks_day,
                            max(snap) AS snap
                     FROM (SELECT item_id, day, pv, clicks, 0 AS snap FROM daily
                           UNION ALL SELECT item_id, day, 0, 0, 1 FROM marks) GROUP BY ALL),
        counted AS (SELECT item_id, day, snap,
                      sum(pv_day) {frame.format('UNBOUNDED')} AS pv,
                      sum(clicks_day) {frame.format('UNBOUNDED')} AS clicks,
                      sum(pv_day) {frame.format(window)} AS pv_recent,
                      sum(clicks_day) {frame.format(window)} AS clicks_recent
                    FROM timeline)
        SELECT item_id, to_timestamp(day * 86400) AS event_timestamp, pv, clicks,
               coalesce(pv_recent, 0) AS pv_recent, coalesce(clicks_recent, 0) AS clicks_recent
        FROM counted WHERE snap = 1
        ) TO '{out}' (FORMAT parquet)""")
    return int(con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0])


def duckdb_coclick(con: duckdb.DuckDBPyConnection, samples: str, out: str, cfg: Config) -> dict[str, int]:
    c = cfg.coclick
    order = "OVER (PARTITION BY user_id ORDER BY event_timestamp, item_id)"
    leads = ", ".join(f"lead(item_id, {k}) {order} AS i{k}, lead(epoch_us(event_timestamp), {k}) "
                      f"{order} AS t{k}" for k in range(1, c.max_position_gap + 1))
    unions = " UNION ALL ".join(
        f"SELECT user_id, least(item_id, i{k}) AS a, greatest(item_id, i{k}) AS b FROM ordered "
        f"WHERE i{k} IS NOT NULL AND i{k} <> item_id AND t{k} - us <= {c.max_time_gap_s * 1_000_000}"
        for k in range(1, c.max_position_gap + 1))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pairs AS
        WITH clicks AS (SELECT user_id, item_id, event_timestamp FROM read_parquet('{samples}')
                        WHERE split = 'train' AND label = 1),
        ordered AS (SELECT user_id, item_id, epoch_us(event_timestamp) AS us, {leads} FROM clicks),
        user_pairs AS (SELECT DISTINCT * FROM ({unions}))
        SELECT a, b, count(*) AS cnt FROM user_pairs GROUP BY ALL HAVING count(*) >= {c.min_support}
    """)
    con.execute(f"""
        COPY (
        WITH clicks AS (SELECT user_id, item_id FROM read_parquet('{samples}')
                        WHERE split = 'train' AND label = 1),
        users AS (SELECT item_id, count(DISTINCT user_id) AS u FROM clicks GROUP BY ALL),
        n AS (SELECT count(DISTINCT user_id) AS n FROM clicks),
        both_ AS (SELECT a AS item_id, b AS partner_id, cnt FROM pairs
                  UNION ALL SELECT b, a, cnt FROM pairs),
        scored AS (SELECT item_id, partner_id, cnt AS count,
                          ln(cnt * n.n / (ui.u * uj.u)) AS score
                   FROM both_ JOIN users ui USING (item_id)
                   JOIN users uj ON uj.item_id = both_.partner_id, n)
        SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY item_id
                       ORDER BY score DESC, count DESC, partner_id) AS rank FROM scored)
        WHERE rank <= {c.top_k}
        ) TO '{out}' (FORMAT parquet)""")
    n_pairs = int(con.execute("SELECT count(*) FROM pairs").fetchone()[0])
    return {"n_pairs": n_pairs, "rows": int(con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0])}


def run_duckdb(cfg: Config, workdir: Path) -> dict[str, Any]:
    samples = str(Lake.from_config(cfg).spark("samples") / "*.parquet")
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    t0 = time.perf_counter()
    stats_rows = duckdb_item_stats(con, samples, str(workdir / "duck_item_stats.parquet"),
                                   cfg.stats.recent_window_days)
    t1 = time.perf_counter()
    coclick = duckdb_coclick(con, samples, str(workdir / "duck_coclick.parquet"), cfg)
    t2 = time.perf_counter()
    return {"item_stats_seconds": round(t1 - t0, 3), "item_stats_rows": stats_rows,
            "coclick_seconds": round(t2 - t1, 3), "coclick_rows": coclick["rows"],
            "coclick_pairs": coclick["n_pairs"]}


def compare_values(cfg: Config, workdir: Path) -> dict[str, Any]:
    """Spark's item_stats and coclick against duckdb's (written by run_duckdb), by value."""
    lake = Lake.from_config(cfg)
    out = {}
    for table, keys in (("item_stats", ("item_id", "event_timestamp")),
                        ("coclick", ("item_id", "partner_id"))):
        duck = pq.read_table(workdir / f"duck_{table}.parquet")
        spark = pq.read_table(lake.spark(table), columns=duck.column_names)
        out[table] = table_differences(spark, duck, keys)
    return out


def bench_size(size: int | str, master: str, workdir: Path) -> dict[str, Any]:
    from saviorrec.datasets.prepare import prepare

    root = workdir / f"run-{size}"
    cfg = size_config(size, root, master)
    t0 = time.perf_counter()
    summary = prepare(cfg)
    prepare_s = time.perf_counter() - t0
    n_events = int(summary["events"])
    spark = run_spark(cfg, workdir / f"config-{size}.yaml")
    jobs = spark["jobs"]
    job_seconds = {job: report["seconds"] for job, report in jobs.items()}
    total_jobs = sum(job_seconds.values())
    duck = run_duckdb(cfg, root)
    values = compare_values(cfg, root)
    agree = {
        "item_stats_values": values["item_stats"]["equal"],
        "coclick_values": values["coclick"]["equal"],
        "coclick_pairs": duck["coclick_pairs"] == jobs["coclick"]["stats"]["n_pairs"],
    }
    return {
        "size": size,
        "events": n_events,
        "prepare_seconds": round(prepare_s, 2),
        "spark_startup_seconds": spark["startup_seconds"],
        "spark_wall_seconds_incl_startup": spark["wall_seconds_incl_startup"],
        "job_seconds": job_seconds,
        "jobs_seconds_total": round(total_jobs, 2),
        "events_per_second": round(n_events / total_jobs),
        "rows": {job: report["rows"] for job, report in jobs.items()},
        "bad_rows": {job: report["bad_rows"] for job, report in jobs.items()},
        "duckdb": duck,
        "spark_over_duckdb": {
            "item_stats": round(job_seconds["item_stats"] / duck["item_stats_seconds"], 2),
            "coclick": round(job_seconds["coclick"] / duck["coclick_seconds"], 2),
        },
        "engines_agree": agree,
        "value_comparison": {t: {"rows": d["rows"], "differing_columns": d["columns"]}
                             for t, d in values.items()},
    }


def device() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "platform": platform.platform()}


def versions() -> dict[str, str]:
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return {"python": platform.python_version(), "pyspark": pyspark.__version__,
            "duckdb": duckdb.__version__, "java": (java.stderr.splitlines() or ["?"])[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="ml,1M", help="comma list: ml, 1M, 10M, 250k, ...")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "spark_jobs.json"))
    parser.add_argument("--note", default="", help="free text saved with the results")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="saviorrec-bench-") as tmp:
        for size in sizes:
            print(f"== {size}", file=sys.stderr, flush=True)
            results.append(bench_size(size, args.master, Path(tmp)))
            print(json.dumps(results[-1], indent=2), file=sys.stderr, flush=True)
    by_size = {r["size"]: r for r in results}
    summary: dict[str, Any] = {}
    if "ml" in by_size:
        ml = by_size["ml"]["spark_wall_seconds_incl_startup"]
        summary["ml_all_jobs_s_incl_startup"] = ml
        summary["ml_target_met"] = ml <= TARGETS["ml_all_jobs_s"]
    if 10_000_000 in by_size:
        summary["10M_all_jobs_s"] = by_size[10_000_000]["jobs_seconds_total"]
        summary["10M_target_met"] = summary["10M_all_jobs_s"] <= TARGETS["10M_all_jobs_s"]
        if 1_000_000 in by_size:
            ratio = by_size[10_000_000]["jobs_seconds_total"] / by_size[1_000_000]["jobs_seconds_total"]
            summary["scaling_10M_over_1M"] = round(ratio, 2)
            summary["scaling_target_met"] = ratio <= TARGETS["scaling_10M_over_1M"]
    report = {
        "benchmark": "spark_jobs",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device(),
        "versions": versions(),
        "master": args.master,
        "targets": TARGETS,
        "summary": summary,
        "note": args.note,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
