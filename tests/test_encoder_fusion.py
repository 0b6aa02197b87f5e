"""SaviorEnc: shapes, missing modality / missing fields, unimodal variants, checkpoint rebuild."""

from __future__ import annotations

import pytest
import torch

from encoder_torch.fusion import SaviorEnc, SaviorEncConfig
from encoder_torch.outputs import load_saviorenc, save_checkpoint

torch.set_num_threads(1)
CFG = SaviorEncConfig(text_dim=6, image_dim=10, text_tokens=4, image_tokens=5, width=16, layers=2,
                      heads=2, dim=8, dropout=0.0)


def _inputs(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"text": torch.randn(n, 4, 6, generator=g), "text_mask": torch.ones(n, 4, dtype=torch.bool),
            "image": torch.randn(n, 5, 10, generator=g), "image_present": torch.ones(n, dtype=torch.bool)}


def _model(cfg: SaviorEncConfig = CFG) -> SaviorEnc:
    torch.manual_seed(0)
    return SaviorEnc(config=cfg).eval()


def test_output_is_unit_norm() -> None:
    z = _model()(**_inputs())
    assert z.shape == (3, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_missing_image_uses_missing_token_not_pixels() -> None:
    model, a, b = _model(), _inputs(), _inputs()
    for x in (a, b):
        x["image_present"][1] = False
    b["image"][1] = 1e3 * torch.randn(5, 10)  # garbage where the image is absent
    za, zb = model(**a), model(**b)
    assert torch.isfinite(za).all()
    assert torch.allclose(za, zb, atol=1e-6)
    # and the missing token matters: the item differs from the same item with its image
    assert not torch.allclose(za[1], model(**_inputs())[1], atol=1e-3)


def test_item_with_no_text_and_no_image() -> None:
    x = _inputs()
    x["text_mask"][0] = False
    x["image_present"][0] = False
    z = _model()(**x)
    assert torch.isfinite(z).all()


def test_missing_text_field_is_masked() -> None:
    model, a, b = _model(), _inputs(), _inputs()
    for x in (a, b):
        x["text_mask"][:, 2] = False  # no tags
    b["text"][:, 2] = 7.0
    assert torch.allclose(model(**a), model(**b), atol=1e-6)


def test_text_only_ignores_the_image() -> None:
    model, a, b = _model(SaviorEncConfig(**{**CFG.__dict__, "modalities": ("text",)})), _inputs(), _inputs()
    b["image"] = torch.randn(3, 5, 10)
    assert torch.allclose(model(**a), model(**b), atol=1e-6)


def test_bad_config_is_an_error() -> None:
    with pytest.raises(ValueError, match="modalities"):
        SaviorEncConfig(modalities=("audio",))
    with pytest.raises(ValueError, match="divisible"):
        SaviorEncConfig(width=10, heads=4)


def test_checkpoint_rebuilds_the_model(tmp_path) -> None:
    model = _model(SaviorEncConfig(**{**CFG.__dict__, "modalities": ("image",)}))
    save_checkpoint(tmp_path / "enc.pt", model=model, config=model.config)
    again = load_saviorenc(tmp_path / "enc.pt").eval()
    assert again.config == model.config
    assert torch.equal(again(**_inputs()), model(**_inputs()))


def test_centring_removes_the_catalogue_mean_and_survives_the_checkpoint(tmp_path) -> None:
    model, x = _model(), _inputs(n=6)
    with torch.no_grad():
        raw = model(**x)
        mean = raw.mean(dim=0)
        model.set_center(mean)
        centred = model(**x)
    # by hand: normalise(raw - mean), row by row
    expected = (raw - mean) / (raw - mean).norm(dim=1, keepdim=True)
    assert torch.allclose(centred, expected, atol=1e-6)
    assert centred.mean(dim=0).norm() < raw.mean(dim=0).norm()
    save_checkpoint(tmp_path / "enc.pt", model=model, config=CFG)
    assert torch.allclose(load_saviorenc(tmp_path / "enc.pt").eval()(**x), centred, atol=1e-6)
    # a checkpoint saved before centring existed (no "center" buffer) loads uncentred
    state = {k: v for k, v in model.state_dict().items() if k != "center"}
    old = SaviorEnc(config=CFG).eval()
    old.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(old(**x), raw, atol=1e-6)


def test_a_zero_centre_leaves_z_bit_for_bit() -> None:
    model, x = _model().eval(), _inputs(n=64)
    seen = []
    model.head.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        z = model(**x)
        # z as computed before centring existed: the head's output, normalised once
        assert torch.equal(z, torch.nn.functional.normalize(seen[-1], dim=-1))
        model.set_center(z.mean(dim=0))
        assert not torch.equal(model(**x), z)
        model.set_center(torch.zeros(CFG.dim))
        assert torch.equal(model(**x), z)
