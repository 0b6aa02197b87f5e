"""New items through the run's frozen models: towers -> SaviorEnc (centred) -> RQ-VAE codes.

``FrozenEncoder.load(cfg)`` loads the frozen text and image towers, the SaviorEnc checkpoint
(with its ``center`` buffer, so a new item is centred on the same catalogue mean as the batch
run's items) and the RQ-VAE checkpoint once; ``embed(items)`` then gives each item's z and its
L nearest codes (eq. 4), the computation the encode and rqvae stages ran on the catalogue. Tower
tokens are rounded to float16 as the tower cache stores them, so an item of the catalogue
embedded again gets its stored z (up to float32 rounding of a different batch).

Versions are checked when loading: the RQ-VAE must have been trained on this SaviorEnc
(``version.json``'s encoder_version equals the encoder checkpoint's sha), and each checkpoint's
file must be the one its version names. The served model's version is the caller's to compare
(:attr:`FrozenEncoder.versions`). Fine-tuned tower tails are not supported here yet: such a
checkpoint is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from encoder_torch.device import resolve_device
from encoder_torch.features import TowerFeatures, encode_images, encode_texts
from encoder_torch.fusion import SaviorEnc
from encoder_torch.outputs import load_rqvae, load_saviorenc
from encoder_torch.rqvae import RQVAE
from encoder_torch.towers import IMAGE_DIM, IMAGE_TOKENS, ImageTower, TextTower, field_texts
from saviorrec.config import Config
from saviorrec.lake import Lake

log = logging.getLogger(__name__)

IMAGE_WORKERS_FROM = 64  # fewer images than this are decoded in the calling process


class VersionConflict(ValueError):
    """The checkpoints on disk are not the versions they claim, or not of one run."""


@dataclass(frozen=True)
class Versions:
    encoder_version: str
    rqvae_version: str


@dataclass(frozen=True)
class Embedded:
    item_ids: np.ndarray  # [n] int64, in input order
    embedding: np.ndarray  # [n, d] float32, L2-normalised, centred as the catalogue's
    codes: np.ndarray  # [n, L] int64: nearest codes per level (no disambiguation index)
    text_present: np.ndarray  # [n] bool
    image_present: np.ndarray  # [n] bool


def file_version(path: Path) -> str:
    """The version save_checkpoint gave the file: sha256[:12] of its bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (run the stage that writes it)")
    return json.loads(path.read_text())


def check_versions(lake: Lake) -> Versions:
    """The encoder and RQ-VAE versions of the run, after checking that the files agree."""
    rq = _read_json(lake.rqvae_version, "RQ-VAE version file")
    enc_file, rq_file = file_version(lake.encoder_checkpoint), file_version(lake.rqvae_checkpoint)
    if rq_file != rq["rqvae_version"]:
        raise VersionConflict(f"{lake.rqvae_checkpoint} is version {rq_file} but "
                              f"{lake.rqvae_version} names {rq['rqvae_version']}: re-run "
                              "`saviorrec rqvae`")
    if enc_file != rq["encoder_version"]:
        raise VersionConflict(f"the RQ-VAE {rq_file} was trained on SaviorEnc "
                              f"{rq['encoder_version']} but {lake.encoder_checkpoint} is "
                              f"{enc_file}: re-run `saviorrec rqvae` on this encoder")
    return Versions(encoder_version=enc_file, rqvae_version=rq_file)


class FrozenEncoder:
    """``embed(items) -> Embedded`` with the run's frozen towers, SaviorEnc and RQ-VAE."""

    def __init__(self, *, text: TextTower, image: ImageTower, model: SaviorEnc, rqvae: RQVAE,
                 versions: Versions, batch_size: int, image_workers: int,
                 device: torch.device) -> None:
        self.text, self.image, self.model, self.rqvae = text, image, model, rqvae
        self.versions, self.batch_size, self.device = versions, batch_size, device
        self.image_workers = image_workers
        for module in (text, image, model, rqvae):
            module.to(device).eval()

    @classmethod
    def load(cls, cfg: Config) -> FrozenEncoder:
        lake, ec = Lake.from_config(cfg), cfg.encoder
        began = time.perf_counter()
        versions = check_versions(lake)
        towers = torch.load(lake.encoder_checkpoint, map_location="cpu", weights_only=True).get(
            "towers")
        if towers:
            raise VersionConflict(f"{lake.encoder_checkpoint} holds fine-tuned tower layers "
                                  "(encoder.finetune_*): onboarding embeds with frozen towers "
                                  "only; onboard with a run trained with frozen towers")
        model, rqvae = load_saviorenc(lake.encoder_checkpoint), load_rqvae(lake.rqvae_checkpoint)
        if rqvae.config.input_dim != model.config.dim:
            raise VersionConflict(f"RQ-VAE input {rqvae.config.input_dim} != SaviorEnc d "
                                  f"{model.config.dim}")
        encoder = cls(text=TextTower(max_tokens=ec.max_text_tokens),
                      image=ImageTower(image_size=ec.image_size), model=model, rqvae=rqvae,
                      versions=versions, batch_size=cfg.onboard.batch_size,
                      image_workers=ec.num_workers, device=resolve_device(ec.device))
        log.info("frozen encoder %s + RQ-VAE %s loaded in %.1fs", versions.encoder_version,
                 versions.rqvae_version, time.perf_counter() - began)
        return encoder

    @property
    def dim(self) -> int:
        return self.model.config.dim

    @property
    def levels(self) -> int:
        return self.rqvae.config.levels

    @torch.no_grad()
    def tower_features(self, items: pd.DataFrame) -> TowerFeatures:
        """Frozen tokens of ``items`` (ITEMS columns), float16-rounded like the tower cache."""
        texts = [field_texts(title=r.title, genres=r.genres, tags=r.tags, overview=r.overview)
                 for r in items.itertuples(index=False)]
        tokens, mask = encode_texts(self.text, texts, batch_size=self.batch_size,
                                    device=self.device)
        has_image = items["image_path"].notna().to_numpy()
        paths = items.loc[has_image, "image_path"].tolist()
        image = np.zeros((len(items), IMAGE_TOKENS, IMAGE_DIM), np.float16)
        if paths:
            workers = self.image_workers if len(paths) >= IMAGE_WORKERS_FROM else 0
            image[has_image] = encode_images(self.image, paths, batch_size=self.batch_size,
                                             num_workers=workers, device=self.device)
        return TowerFeatures(text=torch.from_numpy(tokens.astype(np.float32)),
                             text_mask=torch.from_numpy(mask),
                             image=torch.from_numpy(image.astype(np.float32)),
                             image_present=torch.from_numpy(has_image))

    @torch.no_grad()
    def embed(self, items: pd.DataFrame) -> Embedded:
        """z and RQ codes of every row of ``items`` (ITEMS columns), in their order."""
        features = self.tower_features(items)
        z, codes = [], []
        for start in range(0, len(features), self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, len(features)))
            batch = features.take(rows, device=self.device)
            z_batch = self.model(**vars(batch)).float()
            z.append(z_batch.cpu())
            codes.append(self.rqvae.semantic_codes(z_batch).cpu())
        width = (0, self.dim)
        return Embedded(
            item_ids=items["item_id"].to_numpy(np.int64),
            embedding=torch.cat(z).numpy() if z else np.zeros(width, np.float32),
            codes=torch.cat(codes).numpy().astype(np.int64) if codes else
            np.zeros((0, self.levels), np.int64),
            text_present=features.text_present.numpy(),
            image_present=features.image_present.numpy())
