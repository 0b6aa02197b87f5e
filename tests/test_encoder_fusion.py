"""SaviorEnc: shapes, missing modality / missing fields, unimodal variants, checkpoint rebuild."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder_torch.features import TowerFeatures
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


SKIP = SaviorEncConfig(**{**CFG.__dict__, "tower_skip": True})


def _features(n: int = 40, seed: int = 1) -> TowerFeatures:
    x = _inputs(n=n, seed=seed)
    x["text_mask"][::5, 1:] = False  # some items lack fields, some lack text or image
    x["text_mask"][3] = False
    x["image_present"][::7] = False
    return TowerFeatures(x["text"], x["text_mask"], x["image"], x["image_present"])


def test_the_tower_skip_starts_at_the_off_the_shelf_pca() -> None:
    """Untrained (head's last layer zero), z is the off-the-shelf vector centred and projected
    on its top d principal directions, normalised: checked against numpy's SVD of the vectors
    (cosines between items, which per-direction signs cannot change)."""
    feats, model = _features(), _model(SKIP)
    model.init_skip(feats, batch_size=7)  # batches do not divide the items: the sums must not care
    with torch.no_grad():
        z = model(**vars(feats)).numpy().astype(np.float64)
    o = feats.off_the_shelf().astype(np.float64)  # the baseline's own vectors, [n, 16]
    centred = o - o.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    p = centred @ vt[:CFG.dim].T
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    np.testing.assert_allclose(z @ z.T, p @ p.T, atol=1e-4)
    # the projection has unit RMS norm before normalisation
    with torch.no_grad():
        raw = model.skip(torch.from_numpy(o).float() - model.skip_mean.float())
    assert abs(float(raw.pow(2).sum(1).mean().sqrt()) - 1.0) < 1e-4


def test_the_tower_skip_ignores_what_is_absent_and_survives_the_checkpoint(tmp_path) -> None:
    feats, model = _features(), _model(SKIP)
    model.init_skip(feats, batch_size=16)
    with torch.no_grad():
        model.head[-1].weight.normal_()  # as after training: both paths count
    a, b = _inputs(), _inputs()
    for x in (a, b):
        x["image_present"][1] = False
        x["text_mask"][2, 1:] = False
    b["image"][1] = 1e3 * torch.randn(5, 10)
    b["text"][2, 1:] = 7.0
    with torch.no_grad():
        assert torch.allclose(model(**a), model(**b), atol=1e-6)
    save_checkpoint(tmp_path / "enc.pt", model=model, config=model.config)
    again = load_saviorenc(tmp_path / "enc.pt").eval()
    assert again.config.tower_skip
    with torch.no_grad():
        assert torch.equal(again(**a), model(**a))


def test_a_checkpoint_from_before_the_skip_loads_without_it(tmp_path) -> None:
    model = _model()
    save_checkpoint(tmp_path / "enc.pt", model=model, config=model.config)
    ckpt = torch.load(tmp_path / "enc.pt", weights_only=False)
    del ckpt["config"]["tower_skip"]
    torch.save(ckpt, tmp_path / "old.pt")
    again = load_saviorenc(tmp_path / "old.pt").eval()
    assert not again.config.tower_skip and not hasattr(again, "skip")
    with torch.no_grad():
        assert torch.equal(again(**_inputs()), model(**_inputs()))


def test_init_skip_needs_the_skip() -> None:
    with pytest.raises(ValueError, match="tower_skip=False"):
        _model().init_skip(_features(), batch_size=8)
