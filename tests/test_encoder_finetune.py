"""Fine-tuning the towers' last layers over cached head outputs, with the real towers.

The split forward (cached head, then trainable tail) must give what the whole frozen tower gives;
training must move the tail's weights and nothing else; the pipeline must run end to end with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from test_encoder_pipeline import N, _lake, tiny  # noqa: F401  (tiny: the pipeline fixture)

from encoder_torch import cache as cache_module
from encoder_torch.cache import text_states_id, text_tower_id, tower_features
from encoder_torch.data import coclick_pairs, read_items
from encoder_torch.finetune import TunedFeatures, tune_inputs
from encoder_torch.fusion import MODALITIES, SaviorEnc, SaviorEncConfig
from encoder_torch.pipeline import run_encoder
from encoder_torch.towers import ImageTail, ImageTower, TextTail, TextTower
from encoder_torch.train_encoder import embed_items, train_saviorenc
from saviorrec.config import Config
from saviorrec.lake import Lake, read_table
from saviorrec.schema import EMBEDDINGS

torch.set_num_threads(1)
CPU = torch.device("cpu")
TEXTS = ["Toy Story (1995)", "Adventure, Animation, Children",
         "A cowboy doll is profoundly threatened and jealous when a new spaceman figure arrives.", "x"]


@pytest.fixture(scope="module")
def text_tower() -> TextTower:
    return TextTower(max_tokens=16).eval()


@pytest.fixture(scope="module")
def image_tower() -> ImageTower:
    return ImageTower(image_size=64).eval()


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_text_head_then_tail_is_the_tower(text_tower: TextTower, layers: int) -> None:
    batch = text_tower.tokenize(TEXTS)  # padded to the longest text: the masks matter
    with torch.no_grad():
        expected = text_tower(**batch)  # BertModel's own forward, then the pooling
        states = text_tower.states_before_tail(**batch, tail_layers=layers)
        tail = TextTail(text_tower, layers=layers).eval()
        actual = tail(states, batch["attention_mask"])
    assert states.shape == (len(TEXTS), batch["input_ids"].shape[1], 384)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    # the tail is a copy of the last `layers` layers, not the tower's own modules
    first = text_tower.model.encoder.layer[6 - layers].attention.self.query.weight
    assert torch.equal(tail.layers[0].attention.self.query.weight, first)
    assert tail.layers[0].attention.self.query.weight is not first


def test_image_head_then_tail_is_the_tower(image_tower: ImageTower) -> None:
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = image_tower(pixels)  # extract_features, then the pooling
        fmap = image_tower.map_before_tail(pixels)
        actual = ImageTail(image_tower).eval()(fmap)
    assert fmap.shape == (3, 192, 2, 2)  # 64 px / 32: the input of the last stage
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_tail_layers_beyond_the_tower_name_the_key(text_tower: TextTower) -> None:
    with pytest.raises(ValueError, match=r"encoder\.finetune_text_layers=7 .* has 6"):
        TextTail(text_tower, layers=7)


def _items(tmp_path: Path) -> tuple[Lake, dict]:
    lake = _lake(tmp_path)
    kw = {"cache_dir": tmp_path / "cache", "max_text_tokens": 16, "image_size": 64, "batch_size": 8,
          "num_workers": 0, "device": CPU}
    return lake, kw


def test_untrained_tails_give_the_frozen_features(tmp_path: Path) -> None:
    lake, kw = _items(tmp_path)
    items = read_items(lake)
    frozen = tower_features(items, **kw)
    inputs = tune_inputs(items, text_layers=2, tune_image=True, **kw)
    rows = torch.tensor([0, 3, 3, 7, 11, 5, 0])  # 3 and 7: no poster; 5: no overview; repeats
    with torch.no_grad():
        tuned = TunedFeatures(inputs, modalities=MODALITIES, device=CPU).take(rows)
    want = frozen.take(rows)
    assert torch.equal(tuned.text_mask, want.text_mask) and torch.equal(tuned.image_present, want.image_present)
    # both go through a float16 cache (tokens for the frozen path, head outputs for this one)
    torch.testing.assert_close(tuned.text, want.text, atol=5e-4, rtol=0)
    torch.testing.assert_close(tuned.image, want.image, atol=5e-3, rtol=0)
    assert (tmp_path / "cache" / f"{text_states_id(16, 2)}.npz").is_file()


def test_training_moves_the_tails_only(tmp_path: Path) -> None:
    lake, kw = _items(tmp_path)
    items = read_items(lake)
    inputs = tune_inputs(items, text_layers=1, tune_image=True, **kw)
    features = TunedFeatures(inputs, modalities=MODALITIES, device=CPU)
    before = {k: v.clone() for k, v in features.state_dict().items()}
    pretrained = {k: v.clone() for k, v in inputs.text_tail.state_dict().items()}
    cached = inputs.text_states.states.clone()
    torch.manual_seed(0)
    model = SaviorEnc(config=SaviorEncConfig(width=16, layers=1, heads=2, dim=8, dropout=0.0))
    train_saviorenc(model=model, features=features, pairs=coclick_pairs(lake, items["item_id"].to_numpy()),
                    epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.0, temperature=0.1,
                    weight_decay=0.0, device=CPU, seed=0, tower_lr_scale=0.1)
    after = features.state_dict()
    weights = [k for k, _ in features.named_parameters()]
    assert {k.split(".")[0] for k in weights} == {"text_tail", "image_tail"}
    assert all(not torch.equal(before[k], after[k]) for k in weights), "a tail weight did not move"
    # inference mode: BatchNorm keeps its ImageNet statistics
    stats = [k for k in after if "running_" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    # the frozen part did not move: cached head outputs and the pretrained tail the next variant copies
    assert torch.equal(inputs.text_states.states, cached)
    assert all(torch.equal(v, inputs.text_tail.state_dict()[k]) for k, v in pretrained.items())
    # embedding all items uses the trained tails: a freshly loaded tower's head + the trained tail
    tower = TextTower(max_tokens=16).eval()
    batch = tower.tokenize([items.loc[0, "title"]])
    with torch.no_grad():
        states = tower.states_before_tail(**batch, tail_layers=1)
        trained = features.text_tail(states, batch["attention_mask"])
        original = TextTail(tower, layers=1).eval()(states, batch["attention_mask"])
        title = features.take(torch.tensor([0])).text[0, 0]
    torch.testing.assert_close(title, trained[0], atol=5e-4, rtol=0)
    assert not torch.allclose(title, original[0], atol=1e-3)
    z = embed_items(model=model, features=features, batch_size=5, device=CPU)
    assert z.shape == (N, 8) and np.isfinite(z).all()


def test_pipeline_fine_tunes_the_text_tower(tiny: tuple[Config, Lake],  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, lake = tiny
    cfg = cfg.with_overrides(encoder={"finetune_text_layers": 1})
    out = run_encoder(cfg)
    assert set(out["hit_at_3"]) == {"off_the_shelf", "aligned", "text_only", "image_only"}
    assert all(0.0 <= v <= 1.0 for v in out["hit_at_3"].values())
    emb = read_table(lake.encoder_embeddings, EMBEDDINGS).to_pandas()
    assert len(emb) == N and len(emb["embedding"][0]) == 8
    ckpt = torch.load(lake.encoder_checkpoint, weights_only=True)
    assert ckpt["towers"]["finetune_text_layers"] == 1 and not ckpt["towers"]["finetune_image"]
    assert {k.split(".")[0] for k in ckpt["towers"]["state_dict"]} == {"text_tail"}
    assert (lake.tower_cache / f"{text_states_id(16, 1)}.npz").is_file()
    assert not (lake.tower_cache / f"{text_tower_id(16)}.npz").exists()  # frozen text not needed

    # a re-run reads the head outputs from the cache and trains the same model
    def no_head(*_: object, **__: object) -> None:
        raise AssertionError("text tower head rerun although its output is cached")

    monkeypatch.setattr(cache_module, "encode_text_states", no_head)
    again = run_encoder(cfg)
    assert again["encoder_version"] == out["encoder_version"]


def test_pipeline_rejects_more_layers_than_the_tower_has(tiny: tuple[Config, Lake]) -> None:  # noqa: F811
    cfg, lake = tiny
    with pytest.raises(ValueError, match=r"encoder\.finetune_text_layers=9 .* has 6 transformer layers"):
        run_encoder(cfg.with_overrides(encoder={"finetune_text_layers": 9}))
    assert not lake.tower_cache.exists() or not any(lake.tower_cache.iterdir())  # failed before any work
