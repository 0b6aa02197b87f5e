"""``saviorrec data prepare``: write lake/raw/events.parquet, items.parquet and summary.json.

MovieLens is read whole (it is small); synthetic events are streamed to parquet chunk by chunk
(one row group per chunk) so 100M events need no more memory than one chunk. Every output is
written atomically and replaces the previous run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from saviorrec.config import Config, SyntheticConfig
from saviorrec.datasets import synthetic, synthetic_media
from saviorrec.datasets.movielens import load_movielens
from saviorrec.datasets.subsample import keep_users
from saviorrec.lake import Lake, atomic_path, write_table
from saviorrec.schema import EVENTS, ITEMS, ORACLE

log = logging.getLogger(__name__)


def images_dir(lake: Lake) -> Path:
    """Where synthetic item images go: <run>/lake/raw/images/<item_id>.jpg."""
    return lake.items.parent / "images"


def prepare(cfg: Config) -> dict[str, Any]:
    lake = Lake.from_config(cfg)
    if cfg.data.source == "movielens":
        summary = _prepare_movielens(cfg, lake)
    else:
        summary = _prepare_synthetic(cfg, lake)
    with atomic_path(lake.prepare_summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("prepare: %s events, %s users, %s items -> %s", summary["events"],
             summary["users"], summary["items"], lake.events.parent)
    return summary


def _prepare_movielens(cfg: Config, lake: Lake) -> dict[str, Any]:
    source_dir = cfg.source_dir()
    log.info("prepare: reading MovieLens from %s", source_dir)
    data = load_movielens(source_dir, cfg.data)
    items, dropped = data.items, 0
    if cfg.data.drop_items_without_events:
        rated = pc.is_in(items["item_id"], value_set=pc.unique(data.events["item_id"]))
        items = items.filter(rated)
        dropped = data.items.num_rows - items.num_rows
        log.info("prepare: dropped %d items no kept user rated (data.drop_items_without_events)",
                 dropped)
    write_table(data.events, lake.events, EVENTS)
    write_table(items, lake.items, ITEMS)
    return {
        "source": "movielens",
        "source_dir": str(source_dir),
        "ratings_sha256": data.ratings_sha256,
        "absent_files": data.absent,
        "skipped_rows": data.skipped,
        "skipped_total": sum(sum(r.values()) for r in data.skipped.values()),
        "posters_unmatched": data.posters_unmatched,
        "user_fraction": cfg.data.user_fraction,
        "users_before_subsample": data.users_before_subsample,
        "items_dropped_without_events": dropped,
        **_event_counts(data.events),
        **item_counts(items),
    }


def _prepare_synthetic(cfg: Config, lake: Lake) -> dict[str, Any]:
    syn = cfg.synthetic
    if cfg.data.drop_items_without_events:
        log.warning("prepare: data.drop_items_without_events applies to MovieLens only; the "
                    "synthetic catalogue is sized by synthetic.n_items (all kept)")
    world = synthetic.make_world(syn)
    items = _synthetic_items(cfg, world, lake)
    write_table(items, lake.items, ITEMS)
    counts = write_events(syn, world, lake.events, cfg.data.user_fraction,
                          oracle=(lake.oracle, cfg.labels.click_threshold))
    return {
        "source": "synthetic",
        "seed": syn.seed,
        "absent_files": [],
        "skipped_rows": {},
        "skipped_total": 0,
        "user_fraction": cfg.data.user_fraction,
        "cold_cutoff": str(np.datetime64(synthetic.cold_cutoff_us(world), "us")) + "Z",
        **counts,
        **item_counts(items),
    }


def _synthetic_items(cfg: Config, world: synthetic.World, lake: Lake) -> pa.Table:
    syn = cfg.synthetic
    rng = np.random.default_rng([syn.seed, 2])
    n = syn.n_items
    item_ids = np.arange(1, n + 1, dtype=np.int64)
    text = synthetic_media.item_text(world.item_topic, rng.random(n) < syn.text_fraction,
                                     syn.n_topics, rng)
    with_image = np.flatnonzero(rng.random(n) < syn.image_fraction)[: syn.max_images]
    final_dir = images_dir(lake)
    log.info("prepare: writing %d synthetic item images to %s", len(with_image), final_dir)
    with atomic_path(final_dir) as tmp:
        images = synthetic_media.item_images(item_ids[with_image], world.item_topic[with_image],
                                             syn.n_topics, syn.image_size, rng)
        names = synthetic_media.write_images(images, tmp)
    paths = [str(final_dir / names[i]) if i in names else None for i in item_ids.tolist()]
    return pa.table({
        "item_id": item_ids,
        "title": text.title,
        "genres": text.genres,
        "tags": text.tags,
        "overview": text.overview,
        "image_path": pa.array(paths, pa.string()),
        "topic": world.item_topic,
    }, schema=ITEMS.arrow_schema())


def write_events(syn: SyntheticConfig, world: synthetic.World, path: Path, user_fraction: float,
                 oracle: tuple[Path, float] | None = None) -> dict[str, Any]:
    """Stream the synthetic events to one parquet file, a row group per chunk; their counts.

    ``oracle`` = (path, click threshold): also stream each kept event's true click probability
    (schema.ORACLE) to that side file, row for row with the events; both files are renamed into
    place together only when every chunk is written."""
    n_chunks = math.ceil(syn.n_events / syn.chunk_events)
    seen_users = np.zeros(syn.n_users + 1, dtype=bool)
    seen_items = np.zeros(syn.n_items + 1, dtype=bool)
    n_events = 0
    writer_options = {"coerce_timestamps": "us", "allow_truncated_timestamps": False}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path))
        writer = stack.enter_context(pq.ParquetWriter(tmp, EVENTS.arrow_schema(),
                                                      **writer_options))
        oracle_writer = None
        if oracle is not None:
            oracle_tmp = stack.enter_context(atomic_path(oracle[0]))
            oracle_writer = stack.enter_context(pq.ParquetWriter(
                oracle_tmp, ORACLE.arrow_schema(), **writer_options))
        for k, (chunk, mean) in enumerate(synthetic.iter_event_chunks(syn, world)):
            if user_fraction < 1.0:
                keep = keep_users(chunk["user_id"].to_numpy(), user_fraction)
                chunk, mean = chunk.filter(pa.array(keep)), mean[keep]
            writer.write_table(chunk, row_group_size=max(chunk.num_rows, 1))
            if oracle_writer is not None:
                oracle_writer.write_table(pa.table({
                    "user_id": chunk["user_id"], "item_id": chunk["item_id"],
                    "event_timestamp": chunk["event_timestamp"],
                    "click_probability": synthetic.click_probability(mean, oracle[1]),
                }, schema=ORACLE.arrow_schema()), row_group_size=max(chunk.num_rows, 1))
            seen_users[chunk["user_id"].to_numpy()] = True
            seen_items[chunk["item_id"].to_numpy()] = True
            n_events += chunk.num_rows
            log.info("prepare: synthetic chunk %d/%d, %d events so far", k + 1, n_chunks, n_events)
    return {"events": n_events, "users": int(seen_users.sum()),
            "items_with_events": int(seen_items.sum())}


def _event_counts(events: pa.Table) -> dict[str, Any]:
    return {
        "events": events.num_rows,
        "users": len(pc.unique(events["user_id"])),
        "items_with_events": len(pc.unique(events["item_id"])),
    }


def item_counts(items: pa.Table) -> dict[str, int]:
    """Items and how many carry each kind of side information."""
    def present(name: str) -> int:
        column = items[name]
        return len(column) - column.null_count - int(pc.sum(pc.equal(column, "")).as_py() or 0)

    text = pc.or_(pc.not_equal(items["title"], ""), pc.is_valid(items["overview"]))
    return {
        "items": items.num_rows,
        "items_with_text": int(pc.sum(text).as_py() or 0),
        "items_with_genres": present("genres"),
        "items_with_tags": present("tags"),
        "items_with_overview": present("overview"),
        "items_with_image": present("image_path"),
    }
