"""Both towers load offline from their PyPI packages and give sensible, checkable outputs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from encoder_torch.towers import (
    IMAGE_DIM,
    IMAGE_TOKENS,
    TEXT_DIM,
    ImageTower,
    TextTower,
    field_texts,
    image_weights_path,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def text_tower() -> TextTower:
    return TextTower(max_tokens=32).eval()


def test_text_tower_offline_semantics(text_tower: TextTower) -> None:
    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    with torch.no_grad():
        v = text_tower(**text_tower.tokenize(texts))
    assert v.shape == (3, TEXT_DIM)
    assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.5 > sim[0, 2]  # pretrained: paraphrase close, unrelated far


def test_text_pooling_ignores_padding(text_tower: TextTower) -> None:
    with torch.no_grad():
        alone = text_tower(**text_tower.tokenize(["Toy Story"]))
        padded = text_tower(**text_tower.tokenize(["Toy Story", "a much longer second sentence here"]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_text_finetune_layers(text_tower: TextTower) -> None:
    text_tower.set_trainable(last_layers=2)
    trainable = {n.split(".")[2] for n, p in text_tower.model.named_parameters()
                 if p.requires_grad and n.startswith("encoder.layer.")}
    assert trainable == {"4", "5"}
    assert not text_tower.model.embeddings.word_embeddings.weight.requires_grad
    with pytest.raises(ValueError, match="has 6"):
        text_tower.set_trainable(last_layers=7)
    text_tower.set_trainable(last_layers=0)


def test_image_tower_loads_pretrained_weights_and_pools() -> None:
    tower = ImageTower(image_size=64).eval()
    stored = torch.load(image_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(tower.model._conv_stem.weight, stored["_conv_stem.weight"])
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        tokens = tower(pixels)
        fmap = tower.model.extract_features(pixels)  # 64 px -> a 2x2 map: grid tokens = the map
    assert tokens.shape == (2, IMAGE_TOKENS, IMAGE_DIM)
    assert torch.allclose(tokens[:, 1:], fmap.flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(tokens[:, 0], fmap.mean(dim=(2, 3)), atol=1e-5)


def test_field_texts_marks_missing_fields() -> None:
    assert field_texts(title="Heat (1995)", genres="Action|Crime", tags=None, overview="") == [
        "Heat (1995)", "Action, Crime", "", ""]
    assert field_texts(title="X", genres="(no genres listed)", tags=" a, b ", overview=None) == [
        "X", "", "a, b", ""]


def test_random_weight_towers_need_only_config_and_tokenizer(
        text_tower: TextTower, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The throughput benchmark's --random-weights: same architecture, no weight files."""
    import shutil

    from encoder_torch.towers import TEXT_MODEL_DIR_ENV, ImageTower, text_model_dir

    source = text_model_dir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(os.path.join(source, name), tmp_path / name)
    monkeypatch.setenv(TEXT_MODEL_DIR_ENV, str(tmp_path))
    random_text = TextTower(max_tokens=16, pretrained=False).eval()
    assert sum(p.numel() for p in random_text.parameters()) == \
        sum(p.numel() for p in text_tower.parameters())
    texts = ["a space opera", "a family comedy"]
    with torch.no_grad():
        ours = random_text(**random_text.tokenize(texts))
        real = text_tower(**text_tower.tokenize(texts))
    assert ours.shape == real.shape == (2, 384)
    assert not torch.allclose(ours, real, atol=1e-3)  # not the pretrained weights
    image = ImageTower(image_size=64, pretrained=False).eval()
    with torch.no_grad():
        assert image(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 1280)
