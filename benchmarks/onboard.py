"""Onboarding: seconds from adding one item to the first /rank that scores it, and items/s.

    .venv/bin/python benchmarks/onboard.py [--items 10000] [--samples 5] [--work-dir DIR]

The world (in --work-dir, rebuilt each run): the MovieLens quick run's real SaviorEnc
checkpoint (d = 64, read from runs/movielens-quick, never written), an RQ-VAE of L = 3 levels of
K = 64 codes (random weights, input scaling fitted on that run's real embeddings: timing does not
depend on the weights), and the serving world of tests/test_serving_fixture.py at MovieLens'
catalogue size (9,742 items: lake tables -> Feast apply + materialize into a real redis-server ->
a SaviorRanker exported as a SavedModel whose meta names that RQ-VAE). ``saviorrec serve`` then
runs as a real uvicorn process with the encoder loaded (POST /items).

Measured, for --samples items of MovieLens' own content (title, genres, overview, poster) under
new ids:
- ``post_items``: POST /items to the running service, then POST /rank with the item among the
  candidates: from the POST /items request to the /rank answer that scores the item with its own
  features (``has_features``). This is ``one_item_to_servable_s`` (median).
- ``items_add_library``: what ``saviorrec items add`` does after loading the models (an
  Onboarder in this process, the service in another): from the add to the first /rank that
  scores the item with its features.
- ``items_add_cli_process_s``: one ``saviorrec items add`` process end to end (interpreter start,
  model loading, the add).
- ``items_per_s_cpu``: --items items (MovieLens' catalogue cycled under new ids) in one add.

Writes the key "onboard" of benchmarks/results/live_coldstart.json (other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    REPO_ROOT,
    device_info,
    ensure_repo_on_path,
    library_versions,
    run_header,
    write_json_atomic,
)

ensure_repo_on_path()
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the world builder shared with the tests

RESULTS = REPO_ROOT / "benchmarks" / "results" / "live_coldstart.json"
SOURCE_RUN = REPO_ROOT / "runs" / "movielens-quick"
MOVIELENS = (REPO_ROOT / ".." / "shared" / "data" / "ml-latest-small").resolve()
REDIS_ENV = "SAVIORREC_BENCH_ONBOARD_REDIS"
N_ITEMS, N_USERS = 9_742, 50
NEW_ID = 1_000_000  # ids of onboarded items start here


def movielens_records(n: int, first_id: int) -> list[dict[str, Any]]:
    """``n`` items of MovieLens' content (movies.csv, overviews.csv, posters/), cycled, as
    POST /items records with ids first_id, first_id + 1, ..."""
    movies = pd.read_csv(MOVIELENS / "movies.csv", dtype=str, keep_default_na=False)
    overviews = pd.read_csv(MOVIELENS / "overviews.csv", dtype=str, keep_default_na=False)
    movies = movies.merge(overviews, on="movieId", how="left").fillna("")
    records = []
    for k in range(n):
        row = movies.iloc[k % len(movies)]
        poster = MOVIELENS / "posters" / f"{row.movieId}.jpg"
        record = {"item_id": first_id + k, "title": row.title, "genres": row.genres,
                  "overview": row.overview}
        if poster.is_file():
            record["poster_path"] = str(poster)
        records.append({key: v for key, v in record.items() if v != ""})
    return records


def post(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def scored_with_features(answer: dict[str, Any], item_id: int) -> bool:
    return next(i["has_features"] for i in answer["items"] if i["item_id"] == item_id)


def build(work: Path) -> tuple[Any, Path]:
    """The world, a config file for it and the redis-server (returned running)."""
    import pyarrow.parquet as pq
    import torch
    from conftest import RedisServer
    from test_serving_fixture import build_world, world_config

    from encoder_torch.onboard import file_version
    from encoder_torch.outputs import save_checkpoint, write_json
    from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
    from saviorrec.config import load_config
    from saviorrec.lake import Lake

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = RedisServer(work)
    server.start()
    os.environ[REDIS_ENV] = server.url
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(work / "run")})
    cfg = world_config(cfg, profile="production", redis_env=REDIS_ENV, dim=64, levels=3,
                       seq_len=50).with_overrides(rqvae={"codebook_size": 64},
                                                  serving={"max_candidates": 200})
    lake, source = Lake.from_config(cfg), Lake(SOURCE_RUN)
    lake.encoder_dir.mkdir(parents=True)
    shutil.copy(source.encoder_checkpoint, lake.encoder_checkpoint)
    encoder_version = file_version(lake.encoder_checkpoint)
    torch.manual_seed(0)
    rq = RQVAE(config=RQVAEModelConfig(input_dim=64, latent_dim=64, hidden=(128,), levels=3,
                                       codebook_size=64))
    z = np.stack(pq.read_table(source.encoder_embeddings).column("embedding").to_numpy(
        zero_copy_only=False)).astype(np.float32)
    rq.fit_input_scaling(torch.from_numpy(z))
    version = save_checkpoint(lake.rqvae_checkpoint, model=rq, config=rq.config,
                              encoder_version=encoder_version)
    write_json(lake.rqvae_version, {"rqvae_version": version, "encoder_version": encoder_version,
                                    "levels": 3, "codebook_size": 64, "latent_dim": 64})
    build_world(cfg, n_items=N_ITEMS, n_users=N_USERS, rqvae_version=version)
    config = work / "onboard.yaml"
    import yaml

    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return (cfg, server), config


def start_service(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "saviorrec.cli", "serve", "--config", str(config), "--port",
             str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 600
    while True:
        try:
            with urllib.request.urlopen(url + "/openapi.json", timeout=5) as response:
                if "/items" in json.load(response)["paths"]:
                    return process
                raise RuntimeError(f"the service runs without POST /items:\n{log.read_text()}")
        except (OSError, urllib.error.URLError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"saviorrec serve did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def save(result: dict[str, Any]) -> None:
    """Merge ``result`` under "onboard" into the results file (other keys are kept)."""
    existing = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    write_json_atomic(RESULTS, {**existing, "onboard": result})


def bulk(onboarder: Any, result: dict[str, Any], items: int, chunk: int) -> None:
    """``items`` items in adds of ``chunk`` (how a bulk import runs: each add is atomic);
    the figures are saved after every chunk, so a run stopped early keeps what it measured."""
    from saviorrec.datasets.new_items import request_items

    records = movielens_records(items, NEW_ID + 100_000)
    done, seconds, embed_s, with_poster = 0, 0.0, 0.0, 0
    for start in range(0, items, chunk):
        table = request_items(records[start:start + chunk])
        t0 = time.perf_counter()
        report = onboarder.add(table)
        seconds += time.perf_counter() - t0
        assert len(report["added"]) == table.num_rows
        done += table.num_rows
        embed_s += report["embed_s"]
        with_poster += sum(1 for p in table.column("image_path").to_pylist() if p)
        result["items_per_s_cpu"] = round(done / seconds, 2)
        result["bulk"] = {"items": done, "items_asked": items, "chunk": chunk,
                          "seconds": round(seconds, 2), "embed_s": round(embed_s, 2),
                          "with_poster": with_poster, "catalogue_items": N_ITEMS}
        save(result)
        print(f"bulk: {done}/{items} items, {done / seconds:.2f} items/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/saviorrec-bench-onboard"))
    parser.add_argument("--chunk", type=int, default=1_000, help="items per add in the bulk "
                        "phase")
    parser.add_argument("--port", type=int, default=0, help="service port (0: a free one)")
    args = parser.parse_args(argv)

    from conftest import free_port

    from saviorrec.datasets.new_items import request_items
    from saviorrec.lake import Lake
    from saviorrec.onboard import Onboarder, served_rqvae_version

    began = time.perf_counter()
    (cfg, server), config = build(args.work_dir)
    build_s = time.perf_counter() - began
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(config, port, args.work_dir / "serve.log")
    result: dict[str, Any] = {}
    try:
        records = movielens_records(2 * args.samples, NEW_ID)
        via_http = []
        for record in records[:args.samples]:
            body = {"user_id": 1, "item_ids": [record["item_id"], 1, 2]}
            assert not scored_with_features(post(url + "/rank", body), record["item_id"])
            t0 = time.perf_counter()
            added = post(url + "/items", {"items": [record]})
            t1 = time.perf_counter()
            answer = post(url + "/rank", body)
            t2 = time.perf_counter()
            assert added["added"] == [record["item_id"]], added
            assert scored_with_features(answer, record["item_id"]), answer
            via_http.append({"item_id": record["item_id"], "post_items_s": t1 - t0,
                             "rank_s": t2 - t1, "to_servable_s": t2 - t0})

        t_load = time.perf_counter()
        onboarder = Onboarder.load(cfg, served_version=served_rqvae_version(
            Lake.from_config(cfg).export_dir))
        load_s = time.perf_counter() - t_load
        via_library = []
        for record in records[args.samples:]:
            body = {"user_id": 1, "item_ids": [record["item_id"], 1, 2]}
            assert not scored_with_features(post(url + "/rank", body), record["item_id"])
            t0 = time.perf_counter()
            report = onboarder.add(request_items([record]))
            t1 = time.perf_counter()
            polls = 1
            while not scored_with_features(post(url + "/rank", body), record["item_id"]):
                polls += 1
            t2 = time.perf_counter()
            via_library.append({"item_id": record["item_id"], "add_s": t1 - t0,
                                "to_servable_s": t2 - t0, "rank_requests": polls,
                                "embed_s": report["embed_s"]})

        cli_file = args.work_dir / "one.jsonl"
        cli_file.write_text(json.dumps({**records[0], "item_id": NEW_ID - 1}) + "\n")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "saviorrec.cli", "items", "add", "--config",
                        str(config), str(cli_file)], check=True, capture_output=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        cli_s = time.perf_counter() - t0

        servable = [s["to_servable_s"] for s in via_http]
        result = {
            "one_item_to_servable_s": round(statistics.median(servable), 4),
            "items_per_s_cpu": None,  # filled in by the bulk phase below
            "target_one_item_s": 2.0,
            "meets_target": max(servable) <= 2.0,
            "post_items": {"median_s": round(statistics.median(servable), 4),
                           "max_s": round(max(servable), 4), "samples": via_http},
            "items_add_library": {
                "median_s": round(statistics.median(s["to_servable_s"] for s in via_library), 4),
                "max_s": round(max(s["to_servable_s"] for s in via_library), 4),
                "model_load_s": round(load_s, 3), "samples": via_library},
            "items_add_cli_process_s": round(cli_s, 3),
            "cpu_note": ("CPU only, on a machine whose 2 cores were shared with 4 other "
                         "workers' jobs during the run: figures are upper bounds of what the "
                         "code needs on 2 free cores"),
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
            "world": {"encoder": "runs/movielens-quick SaviorEnc (d=64, real weights)",
                      "rqvae": "L=3, K=64, random weights, input scaling from that run's z",
                      "ranker": "tests/test_serving_fixture world, random weights",
                      "online_store": "redis-server (production profile)",
                      "build_s": round(build_s, 1)},
            "device": device_info(), "libraries": library_versions(), **run_header(
                sys.argv),
        }
        save(result)
        service.terminate()  # the service takes no CPU in the bulk phase
        service.wait(timeout=30)
        bulk(onboarder, result, args.items, args.chunk)
    finally:
        if service.poll() is None:
            service.kill()
        server.stop()
    print(json.dumps({k: result.get(k) for k in ("one_item_to_servable_s", "items_per_s_cpu",
                                                  "post_items", "items_add_cli_process_s")},
                     indent=1, default=str)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
