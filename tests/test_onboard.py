"""Onboarding new items into a finished run (issue 28 items 1, 3 and 6), through real parts.

A tiny run is built once: a SaviorEnc (random weights, a non-zero ``center``) and an RQ-VAE saved
as the encoder stages save them, the serving world of test_serving_fixture (Feast apply +
materialize into a real redis-server, a SavedModel exported from a Keras ranker) whose model
records that RQ-VAE's version. Each test copies the run folder and starts a redis-server from a
snapshot of the materialised store, then onboards with the real MiniLM and EfficientNet towers.

Expected values are computed apart from the onboarding code: the tower tokens by the towers
themselves, z by SaviorEnc with its centre zeroed then centred by hand, the codes as each
level's nearest code worked out with numpy, the scores by the Keras model on the training-time
layout (World.per_sample_inputs).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
import torch
from conftest import RedisServer
from fastapi.testclient import TestClient
from test_serving_fixture import REDIS_ENV, World, build_world, world_config

from encoder_torch.fusion import SaviorEnc, SaviorEncConfig
from encoder_torch.onboard import FrozenEncoder, VersionConflict
from encoder_torch.outputs import save_checkpoint, write_json
from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
from encoder_torch.semantic_ids import disambiguate_new
from encoder_torch.towers import ImageTower, TextTower, field_texts
from feature_repo import push as push_module
from feature_repo.online import OnlineStoreUnavailable
from feature_repo.store import get_store
from saviorrec.config import REPO_ROOT, Config, load_config
from saviorrec.datasets.badrows import BadInputError
from saviorrec.datasets.new_items import OnboardRefused, read_new_items
from saviorrec.lake import Lake
from saviorrec.onboard import Onboarder, served_rqvae_version
from saviorrec.schema import ITEM_STAT_DEFAULTS, ITEM_STAT_NUMERIC
from serving.app import create_app
from serving.item_cache import CachedItem, ItemCache
from serving.service import RankingService

pytestmark = pytest.mark.redis

NEW = 101  # an item id the world does not know
TITLE = "The Quiet Orbit (2031)"
OVERVIEW = "A lighthouse keeper on a space station discovers a signal from her childhood home."


@dataclass
class Built:
    cfg: Config
    world: World
    model: Any
    dump: Path
    encoder: FrozenEncoder  # loaded once: the towers take seconds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    root = tmp_path_factory.mktemp("onboard")
    server = RedisServer(root)
    server.start()
    mp = pytest.MonkeyPatch()
    mp.setenv(REDIS_ENV, server.url)
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(root / "run")})
    cfg = world_config(cfg, profile="production", redis_env=REDIS_ENV).with_overrides(
        serving={"xla": False, "max_candidates": 16, "max_body_bytes": 65_536},
        onboard={"batch_size": 4})
    try:
        rqvae_version = save_frozen_models(cfg)
        world, model = build_world(cfg, rqvae_version=rqvae_version)
        redis.Redis.from_url(server.url).save()
        yield Built(cfg, world, model, root / "dump.rdb", FrozenEncoder.load(cfg))
    finally:
        server.stop()
        mp.undo()


def save_frozen_models(cfg: Config) -> str:
    """A SaviorEnc of d = encoder.dim with a non-zero centre and an RQ-VAE of the world's L and
    K, saved where the encode and rqvae stages save theirs; returns the RQ-VAE version."""
    lake = Lake.from_config(cfg)
    torch.manual_seed(0)
    enc = SaviorEnc(config=SaviorEncConfig(width=16, layers=1, heads=2, dim=cfg.encoder.dim))
    enc.set_center(torch.nn.functional.normalize(torch.randn(cfg.encoder.dim), dim=0) * 0.5)
    encoder_version = save_checkpoint(lake.encoder_checkpoint, model=enc, config=enc.config)
    write_json(lake.encoder_version, {"encoder_version": encoder_version})
    rq = RQVAE(config=RQVAEModelConfig(input_dim=cfg.encoder.dim, latent_dim=cfg.encoder.dim,
                                       hidden=(16,), levels=cfg.rqvae.levels,
                                       codebook_size=cfg.rqvae.codebook_size))
    rq.fit_input_scaling(torch.nn.functional.normalize(torch.randn(64, cfg.encoder.dim), dim=1))
    version = save_checkpoint(lake.rqvae_checkpoint, model=rq, config=rq.config,
                              encoder_version=encoder_version)
    write_json(lake.rqvae_version, {"rqvae_version": version, "encoder_version": encoder_version})
    return version


@dataclass
class Run:
    cfg: Config
    built: Built
    server: RedisServer
    onboarder: Onboarder

    @property
    def lake(self) -> Lake:
        return Lake.from_config(self.cfg)

    def offline_state(self) -> dict[str, str]:
        """sha256 of every file the onboarding may write (the lake's features and stats)."""
        files = [self.lake.item_multimodal, self.lake.onboarded_items,
                 *sorted(self.lake.spark("item_stats").iterdir())]
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}

    def online_hash(self, item_id: int) -> dict[bytes, bytes]:
        reader_key = self.reader_key(item_id)
        return redis.Redis.from_url(self.server.url).hgetall(reader_key)

    def reader_key(self, item_id: int) -> bytes:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        key = EntityKey(join_keys=["item_id"], entity_values=[Value(int64_val=item_id)])
        return serialize_entity_key(key, entity_key_serialization_version=3) + b"saviorrec"


@pytest.fixture()
def run(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """A copy of the built run and of its store: each test may write both."""
    shutil.copytree(Lake.from_config(built.cfg).root, tmp_path / "run")
    shutil.copy(built.dump, tmp_path / "dump.rdb")
    server = RedisServer(tmp_path)
    server.start()
    monkeypatch.setenv(REDIS_ENV, server.url)
    cfg = built.cfg.with_overrides(run={"root": str(tmp_path / "run")})
    onboarder = Onboarder(cfg, built.encoder, get_store(cfg))
    yield Run(cfg, built, server, onboarder)
    server.stop()


def items_file(folder: Path, rows: list[dict[str, Any]], name: str = "new.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def poster(movielens_dir: Path) -> str:
    return str(movielens_dir / "posters" / "1.jpg")


def expected_z_and_codes(built: Built, *, texts: list[str], image: str | None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The item's z and L codes, computed without encoder_torch.onboard."""
    lake, cfg = Lake.from_config(built.cfg), built.cfg
    ckpt = torch.load(lake.encoder_checkpoint, weights_only=True)
    enc = SaviorEnc(config=SaviorEncConfig(**{**ckpt["config"],
                                             "modalities": tuple(ckpt["config"]["modalities"])}))
    state = dict(ckpt["state_dict"])
    center = state.pop("center").numpy()
    enc.load_state_dict(state)  # no centre: z before centring
    enc.eval()
    tower = TextTower(max_tokens=cfg.encoder.max_text_tokens).eval()
    mask = torch.tensor([[bool(t) for t in texts]])
    text = torch.zeros(1, 4, 384)
    with torch.no_grad():
        present = [t for t in texts if t]
        if present:
            vectors = tower(**tower.tokenize(present)).half().float()
            text[0, mask[0]] = vectors
        pixels = torch.zeros(1, 5, 1280)
        if image:
            from encoder_torch.towers import load_image

            img = ImageTower(image_size=cfg.encoder.image_size).eval()
            pixels = img(load_image(image, image_size=cfg.encoder.image_size)[None]).half().float()
        raw = enc(text=text, text_mask=mask, image=pixels,
                  image_present=torch.tensor([image is not None])).numpy()[0]
    z = (raw - center) / np.linalg.norm(raw - center)
    rq = torch.load(lake.rqvae_checkpoint, weights_only=True)["state_dict"]
    with torch.no_grad():
        mean, scale = rq["input_mean"].numpy(), rq["input_scale"].numpy()
        h = (torch.from_numpy(((z - mean) / scale).astype(np.float32))[None])
        w = {k: v for k, v in rq.items()}
        h = torch.nn.functional.gelu(h @ w["encoder.0.weight"].T + w["encoder.0.bias"])
        latent = (h @ w["encoder.2.weight"].T + w["encoder.2.bias"]).numpy()[0]
    codes = []
    residual = latent
    for level in w["codebooks"].numpy():
        code = int(np.argmin(((level - residual) ** 2).sum(axis=1)))
        codes.append(code)
        residual = residual - level[code]
    return z.astype(np.float32), np.asarray(codes)


# --- the contract: files, semantic ids, cache -----------------------------------------------
def test_file_errors_name_file_row_column_and_value(tmp_path: Path) -> None:
    csv = tmp_path / "new.csv"
    csv.write_text("movieId,title,genres\n7,Fine,Drama\nx7,Bad,Drama\n")
    with pytest.raises(BadInputError, match=r"new.csv: row 3, column 'movieId': value 'x7'"):
        read_new_items(csv)
    csv.write_text("movieId,title,poster_path\n7,Fine,missing.jpg\n")
    with pytest.raises(BadInputError, match=r"row 2, column 'poster_path': value 'missing.jpg'"):
        read_new_items(csv)
    jsonl = items_file(tmp_path, [{"item_id": 7, "title": "a"}, {"item_id": 7, "tittle": "b"}])
    with pytest.raises(BadInputError, match=r"line 2: unknown column\(s\) \['tittle'\]"):
        read_new_items(jsonl)
    jsonl = items_file(tmp_path, [{"item_id": 7}, {"movieId": "7"}])
    with pytest.raises(BadInputError, match=r"line 2, column 'movieId': value 7 repeats "):
        read_new_items(jsonl)


def test_csv_in_the_movielens_layout_reads_as_items(tmp_path: Path, movielens_dir: Path) -> None:
    shutil.copy(poster(movielens_dir), tmp_path / "p.jpg")
    csv = tmp_path / "new.csv"
    csv.write_text('movieId,title,genres,overview,poster_path\n'
                   '9,"A, B",(no genres listed), An overview. ,p.jpg\n10,,,,\n')
    rows = read_new_items(csv).to_pylist()
    assert rows[0] == {"item_id": 9, "title": "A, B", "genres": None, "tags": None,
                       "overview": "An overview.", "image_path": str((tmp_path / "p.jpg").resolve()),
                       "topic": None}
    assert rows[1]["title"] == "" and rows[1]["overview"] is None and rows[1]["image_path"] is None
    # tags (MovieLens' tags.csv joined per item): the batch encoder embeds them with the title
    csv.write_text('movieId,title,tags\n11,C," dark,  twist ending "\n')
    assert read_new_items(csv).to_pylist()[0]["tags"] == "dark,  twist ending"


def test_new_semantic_ids_continue_the_stored_disambiguation() -> None:
    existing = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0]])
    new = disambiguate_new(np.array([[1, 2], [3, 1], [1, 2], [3, 0]]), existing)
    assert new.tolist() == [[1, 2, 2], [3, 1, 0], [1, 2, 3], [3, 0, 1]]


def test_missing_entries_expire_after_their_own_ttl() -> None:
    now = [100.0]
    cache = ItemCache(ttl_s=60, max_items=10, missing_ttl_s=0.5, clock=lambda: now[0])
    cache.put_many({1: CachedItem({}, missing=True), 2: CachedItem({}, missing=False)})
    now[0] += 0.6
    found, absent = cache.get_many([1, 2])
    assert list(found) == [2] and absent == [1]
    never = ItemCache(ttl_s=60, max_items=10, missing_ttl_s=0, clock=lambda: now[0])
    never.put_many({1: CachedItem({}, missing=True), 2: CachedItem({}, missing=False)})
    assert never.get_many([1, 2])[1] == [1]
    never.invalidate([2])
    assert never.get_many([2])[1] == [2]


# --- onboarding through the real store and model ---------------------------------------------
def test_an_added_item_is_scored_with_its_own_features_on_the_next_request(
        run: Run, movielens_dir: Path, tmp_path: Path) -> None:
    """The service started before the item existed, and has just scored it with the defaults:
    the first request after `items add` scores it with its pushed embedding, semantic ids and
    PV-0 statistics, as the Keras model does offline."""
    svc = RankingService.start(run.cfg)
    before = svc.rank(1, [NEW, 3])
    assert before["missing_item_ids"] == [NEW]
    path = items_file(tmp_path, [{"movieId": NEW, "title": TITLE, "genres": "Sci-Fi|Drama",
                                  "overview": OVERVIEW, "poster_path": poster(movielens_dir)}])
    report = run.onboarder.add_file(path)
    assert report["added"] == [NEW] and report["unchanged"] == [] and report["pv0_stats"] == 1

    after = svc.rank(1, [NEW, 3])
    assert after["missing_item_ids"] == []
    z, codes = expected_z_and_codes(run.built, texts=field_texts(
        title=TITLE, genres="Sci-Fi|Drama", tags=None, overview=OVERVIEW),
        image=poster(movielens_dir))
    item = svc.reader.read(1, [NEW]).items[NEW]
    np.testing.assert_allclose(item["embedding"], z, atol=2e-5)
    assert list(item["semantic_ids"][:-1]) == codes.tolist()
    assert all(item[n] == ITEM_STAT_DEFAULTS[n] for n in (*ITEM_STAT_NUMERIC, "pv_bucket"))

    world = run.built.world
    world.multimodal[NEW] = {"embedding": item["embedding"].tolist(),
                             "semantic_ids": item["semantic_ids"].tolist()}
    try:
        expected = run.built.model(world.per_sample_inputs(1, [NEW, 3]), training=False)
    finally:
        del world.multimodal[NEW]
    scores = {i["item_id"]: i["score"] for i in after["items"]}
    np.testing.assert_allclose([scores[NEW], scores[3]], np.asarray(expected).ravel(), atol=1e-5)
    assert scores[3] == pytest.approx({i["item_id"]: i["score"] for i in before["items"]}[3])

    # offline: the same rows in the push sources' batch sources
    mm = pq.read_table(run.lake.item_multimodal).to_pandas().set_index("item_id").loc[NEW]
    np.testing.assert_allclose(mm["embedding"], item["embedding"])
    assert mm["rqvae_version"] == served_rqvae_version(run.lake.export_dir)
    stats = pq.read_table(run.lake.spark("item_stats")).to_pandas()
    assert stats[stats.item_id == NEW]["pv"].tolist() == [0]


def test_adding_the_same_item_again_changes_nothing(run: Run, tmp_path: Path) -> None:
    path = items_file(tmp_path, [{"item_id": NEW, "title": TITLE, "overview": OVERVIEW}])
    run.onboarder.add_file(path)
    offline, online = run.offline_state(), run.online_hash(NEW)
    again = run.onboarder.add_file(path)
    assert again["added"] == [] and again["unchanged"] == [NEW]
    assert run.offline_state() == offline and run.online_hash(NEW) == online


def test_an_existing_id_with_other_content_is_refused(run: Run, tmp_path: Path) -> None:
    run.onboarder.add_file(items_file(tmp_path, [{"item_id": NEW, "title": TITLE}]))
    offline, online = run.offline_state(), run.online_hash(NEW)
    other = items_file(tmp_path, [{"item_id": NEW + 1, "title": "x"},
                                  {"item_id": NEW, "title": "Another Film"}], "other.jsonl")
    with pytest.raises(OnboardRefused, match=re.escape(f"{NEW} (title '{TITLE}' -> 'Another "
                                                         "Film')")):
        run.onboarder.add_file(other)
    assert run.offline_state() == offline and run.online_hash(NEW) == online
    assert run.online_hash(NEW + 1) == {}  # the other item of the file was not added either
    with pytest.raises(OnboardRefused, match=r"5 \(in item_multimodal.parquet, content unknown"):
        run.onboarder.add_file(items_file(tmp_path, [{"item_id": 5, "title": "x"}], "c.jsonl"))


def test_an_item_without_text_or_image_gets_the_missing_tokens_or_is_refused(
        run: Run, tmp_path: Path) -> None:
    path = items_file(tmp_path, [{"item_id": NEW}])
    refusing = Onboarder(run.cfg.with_overrides(onboard={"no_content": "refuse"}),
                         run.onboarder.encoder, run.onboarder.store)
    with pytest.raises(OnboardRefused, match=rf"neither text nor an image, e.g. item_id {NEW} "
                                             r"\(onboard.no_content: refuse"):
        refusing.add_file(path)
    assert run.online_hash(NEW) == {}
    report = run.onboarder.add_file(path)
    assert report["added"] == [NEW] and report["without_content"] == [NEW]
    z, _ = expected_z_and_codes(run.built, texts=["", "", "", ""], image=None)
    stored = pq.read_table(run.lake.item_multimodal).to_pandas().set_index("item_id")
    np.testing.assert_allclose(stored.loc[NEW, "embedding"], z, atol=2e-5)


def test_redis_down_fails_naming_it_and_leaves_offline_unchanged(run: Run,
                                                                  tmp_path: Path) -> None:
    offline = run.offline_state()
    run.server.stop()
    with pytest.raises(OnlineStoreUnavailable,
                       match=f"Redis online store at {run.server.address} is unreachable"):
        run.onboarder.add_file(items_file(tmp_path, [{"item_id": NEW, "title": TITLE}]))
    assert run.offline_state() == offline and not run.lake.onboarded_items.exists()


def test_a_push_that_fails_half_way_leaves_both_stores_as_they_were(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops between the two pushes (an injected error; the multimodal rows
    are already in Redis): the offline files are restored and the pushed online fields are
    deleted again, so neither store holds the item."""
    offline = run.offline_state()
    real_push = push_module.push_online
    calls: list[str] = []

    def push_then_fail(store: Any, view: str, table: Any) -> None:
        calls.append(view)
        if view == "item_stats":
            raise redis.exceptions.ConnectionError("injected: connection lost")
        real_push(store, view, table)

    monkeypatch.setattr("saviorrec.onboard.push_online", push_then_fail)
    with pytest.raises(redis.exceptions.ConnectionError, match="injected"):
        run.onboarder.add_file(items_file(tmp_path, [{"item_id": NEW, "title": TITLE}]))
    assert calls == ["item_multimodal", "item_stats"]
    assert run.offline_state() == offline and not run.lake.onboarded_items.exists()
    assert run.online_hash(NEW) == {}  # the pushed multimodal fields were deleted again
    assert run.online_hash(5) != {}


def test_versions_other_than_the_served_models_are_refused(run: Run) -> None:
    mine = json.loads(run.lake.rqvae_version.read_text())["rqvae_version"]
    with pytest.raises(OnboardRefused, match=rf"rqvae_version 'elsewhere' but .*rqvae.pt is "
                                             rf"'{mine}'"):
        Onboarder.load(run.cfg, served_version="elsewhere")
    checkpoint = run.lake.encoder_checkpoint
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # another encoder
    with pytest.raises(VersionConflict, match=rf"RQ-VAE {mine} was trained on SaviorEnc "):
        FrozenEncoder.load(run.cfg)


def test_post_items_makes_the_item_servable_on_the_next_rank(run: Run, movielens_dir: Path
                                                             ) -> None:
    svc = RankingService.start(run.cfg.with_overrides(serving={"item_cache_missing_ttl_s": 60}))
    client = TestClient(create_app(run.cfg, svc, onboard=run.onboarder.add_records))
    body = {"user_id": 2, "item_ids": [NEW, 4]}
    first = client.post("/rank", json=body).json()
    assert first["missing_item_ids"] == [NEW]  # now cached as missing for 60 s
    item = {"item_id": NEW, "title": TITLE, "poster_path": poster(movielens_dir)}
    added = client.post("/items", json={"items": [item]})
    assert added.status_code == 200, added.text
    assert added.json()["added"] == [NEW]
    second = client.post("/rank", json=body).json()
    assert second["missing_item_ids"] == []  # the push dropped the cached entry
    assert client.post("/items", json={"items": [item]}).json()["unchanged"] == [NEW]
    conflict = client.post("/items", json={"items": [{**item, "title": "Other"}]})
    assert conflict.status_code == 409 and str(NEW) in conflict.json()["detail"]
    bad = client.post("/items", json={"items": [{"item_id": NEW + 1, "poster_path": "/no.jpg"}]})
    assert bad.status_code == 422 and "/no.jpg" in bad.text
    assert "/items" in client.get("/openapi.json").json()["paths"]
    run.server.stop()
    down = client.post("/items", json={"items": [{"item_id": NEW + 2, "title": "x"}]})
    assert down.status_code == 503 and run.server.address in down.json()["detail"]


def test_cli_items_add(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from saviorrec.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run.cfg.model_dump(mode="json")))
    path = items_file(tmp_path, [{"item_id": NEW, "title": TITLE}])
    assert main(["items", "add", "--config", str(config), str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == [NEW]
    other = items_file(tmp_path, [{"item_id": NEW, "title": "Other"}], "o.jsonl")
    assert main(["items", "add", "--config", str(config), str(other)]) == 1
    assert "already exist with other content" in capsys.readouterr().err


# --- the local profile: the sqlite online store ----------------------------------------------
@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Onboarder:
    root = tmp_path_factory.mktemp("onboard_local")
    cfg = load_config(REPO_ROOT / "configs" / "movielens.yaml").with_overrides(
        run={"root": str(root / "run")})
    cfg = world_config(cfg, profile="local", redis_env=REDIS_ENV).with_overrides(
        serving={"xla": False, "max_candidates": 16, "max_body_bytes": 65_536})
    build_world(cfg, rqvae_version=save_frozen_models(cfg))
    return Onboarder.load(cfg, served_version=served_rqvae_version(Lake.from_config(cfg).export_dir))


def test_local_profile_pushes_to_sqlite_and_puts_it_back_on_failure(
        local_run: Onboarder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_repo.online import read_items

    onboarder, lake = local_run, Lake.from_config(local_run.cfg)
    path = items_file(tmp_path, [{"item_id": NEW, "title": TITLE}])
    before = hashlib.sha256(lake.item_multimodal.read_bytes()).hexdigest()

    def fail_on_stats(store: Any, view: str, table: Any) -> None:
        if view == "item_stats":
            raise OSError("injected: disk full")
        push_module.push_online(store, view, table)

    monkeypatch.setattr("saviorrec.onboard.push_online", fail_on_stats)
    with pytest.raises(OSError, match="injected"):
        onboarder.add_file(path)
    items, missing = read_items(onboarder.store, [NEW])
    assert missing == [NEW] and items[NEW]["rqvae_version"] == ""  # the pushed row is gone
    assert hashlib.sha256(lake.item_multimodal.read_bytes()).hexdigest() == before

    monkeypatch.undo()
    report = onboarder.add_file(path)
    items, missing = read_items(onboarder.store, [NEW, 5])
    assert report["added"] == [NEW] and missing == []
    offline = pq.read_table(lake.item_multimodal).to_pandas().set_index("item_id").loc[NEW]
    np.testing.assert_allclose(items[NEW]["embedding"], offline["embedding"])
    assert items[NEW]["semantic_ids"] == list(offline["semantic_ids"])
    assert items[NEW]["pv"] == 0 and items[NEW]["rqvae_version"] == report["rqvae_version"]
