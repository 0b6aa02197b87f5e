"""End to end on a tiny hand-built lake with the real towers: run_encoder then run_rqvae."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from encoder_torch import cache as cache_module
from encoder_torch.outputs import load_rqvae
from encoder_torch.pipeline import run_encoder, run_rqvae
from saviorrec.config import Config
from saviorrec.lake import Lake, read_table, write_table
from saviorrec.metrics import read_metrics
from saviorrec.schema import COCLICK, EMBEDDINGS, ITEM_MULTIMODAL, ITEMS, SAMPLES, Table

torch.set_num_threads(1)
N = 12


def _folder(table: pa.Table, folder: Path, schema: Table) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(schema.arrow_schema()), folder / "part-0.parquet")


def _lake(root: Path) -> Lake:
    lake = Lake(root)
    paths = []
    for i in range(N):
        if i in (3, 7):  # two items without a poster
            paths.append(None)
            continue
        path = root / "img" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 36), ((40 * i) % 256, 255 - 20 * i, 90)).save(path)
        paths.append(str(path))
    items = pa.table({
        "item_id": np.arange(1, N + 1) * 10, "title": [f"Movie {i} ({1990 + i})" for i in range(N)],
        "genres": ["Comedy|Drama" if i % 2 else "Action" for i in range(N)],
        "tags": [None if i % 3 else "funny, classic" for i in range(N)],
        "overview": [None if i == 5 else f"A story about thing number {i}." for i in range(N)],
        "image_path": paths, "topic": [None] * N})
    write_table(items, lake.items, ITEMS)
    a = np.arange(N) * 10 + 10
    _folder(pa.table({"item_id": np.concatenate([a, np.roll(a, -1)]),
                      "partner_id": np.concatenate([np.roll(a, -1), a]),
                      "count": [2] * 2 * N, "score": [1.0] * 2 * N, "rank": [1] * 2 * N}),
            lake.spark("coclick"), COCLICK)
    rows = [(u, int(a[(u + j) % N]), split, 10 * j + (0 if split == "valid" else 100))
            for u in range(4) for j in range(3) for split in ("valid", "test")]
    _folder(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                      "label": [1] * len(rows), "rating": [5.0] * len(rows),
                      "event_timestamp": [datetime.fromtimestamp(1e9 + r[3], UTC) for r in rows],
                      "split": [r[2] for r in rows]}), lake.spark("samples"), SAMPLES)
    return lake


@pytest.fixture()
def tiny(config: Config, tmp_path: Path) -> tuple[Config, Lake]:
    cfg = config.with_overrides(
        encoder={"epochs": 2, "batch_size": 4, "fusion_layers": 1, "fusion_width": 16,
                 "fusion_heads": 2, "dim": 8, "image_size": 64, "tower_batch_size": 8,
                 "num_workers": 0, "max_text_tokens": 16, "device": "cpu", "hit_k": 3,
                 "ablations": True},  # the full grid's text-only and image-only encoders too
        rqvae={"levels": 2, "codebook_size": 4, "latent_dim": 4, "hidden": [8], "epochs": 3,
               "batch_size": 8, "dead_code_every": 1, "device": "cpu", "sinkhorn_iters": 10})
    return cfg, _lake(cfg.run_dir())


def test_encoder_and_rqvae_end_to_end(tiny: tuple[Config, Lake], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, lake = tiny
    out = run_encoder(cfg)
    metrics = read_metrics(lake.metrics)
    hits = metrics["encoder"]["hit_at_3"]
    # "aligned" is SaviorEnc on both modalities: no second key repeats it
    assert set(hits) == {"off_the_shelf", "aligned", "text_only", "image_only"}
    assert all(0.0 <= v <= 1.0 for v in hits.values())
    assert out["coclick_pairs"] == N  # the 2N symmetric rows are N unordered pairs
    emb = read_table(lake.encoder_embeddings, EMBEDDINGS).to_pandas()
    assert len(emb) == N and len(emb["embedding"][0]) == 8
    before = pq.read_table(lake.off_the_shelf_embeddings).to_pandas()
    assert before["item_id"].tolist() == emb["item_id"].tolist()
    vectors = np.stack(before["embedding"].to_numpy())
    assert vectors.shape == (N, 384 + 1280)  # text + image towers, pooled (Fig. 5's "before")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # a re-run reuses the cached tower features: building a tower would now fail
    def no_tower(**_: object) -> None:
        raise AssertionError("tower rebuilt although its features are cached")

    monkeypatch.setattr(cache_module, "TextTower", no_tower)
    monkeypatch.setattr(cache_module, "ImageTower", no_tower)
    again = run_encoder(cfg)
    assert again["encoder_version"] == out["encoder_version"]  # same seed, same model bytes

    summary = run_rqvae(cfg)
    table = read_table(lake.item_multimodal, ITEM_MULTIMODAL).to_pandas()
    assert sorted(table["item_id"]) == list(range(10, 10 * N + 1, 10))
    ids = np.stack(table["semantic_ids"].to_numpy())
    assert ids.shape == (N, 3) and ids[:, :2].max() < 4
    assert len({tuple(r) for r in ids}) == N  # unique after the disambiguation level
    version = json.loads(lake.rqvae_version.read_text())["rqvae_version"]
    assert set(table["rqvae_version"]) == {version} == {summary["version"]}
    codebooks = np.load(lake.rqvae_codebooks)
    model = load_rqvae(lake.rqvae_checkpoint)
    assert codebooks.dtype == np.float32 and codebooks.shape == (2, 4, 4)
    assert np.array_equal(codebooks, model.codebooks.detach().numpy())
    z = torch.tensor(np.stack(table["embedding"].to_numpy()), dtype=torch.float32)
    assert np.array_equal(model.semantic_codes(z).numpy(), ids[:, :2])  # rebuilt model, same ids
    rq = read_metrics(lake.metrics)["rqvae"]
    assert len(rq["sinkhorn"]["utilization_per_level"]) == 2 and "argmin" in rq
