"""Throughput of the encoder stage on synthetic inputs.

embed: items/s through the real towers (generated posters and texts) and SaviorEnc;
rqvae: k-means init time, one training epoch, and items/s to assign semantic ids, on random
d-dimensional embeddings (1 million by default).

    python benchmarks/encoder_throughput.py --device auto            # GPU sizes
    python benchmarks/encoder_throughput.py --device cpu --small     # a quick CPU run
Results are printed and saved to benchmarks/results/encoder_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from encoder_torch.device import resolve_device
from encoder_torch.fusion import SaviorEnc, SaviorEncConfig, encoder_model_config
from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
from encoder_torch.towers import ImageTower, TextTower
from encoder_torch.train_rqvae import kmeans_init, train_rqvae
from saviorrec.config import load_config

WORDS = ["space", "crew", "journey", "love", "war", "city", "night", "secret", "family", "detective", "ghost", "island", "robot", "king", "summer", "school", "heist", "river", "storm", "dream", "music", "border", "train", "winter", "hero"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_embed(*, items: int, batch: int, image_size: int, fusion_config: SaviorEncConfig,
                device: torch.device, amp: bool, pretrained: bool = True) -> dict:
    rng = np.random.default_rng(0)
    texts = [[" ".join(rng.choice(WORDS, n)) for n in (4, 3, 5, 60)] for _ in range(items)]
    text_tower = TextTower(max_tokens=64, pretrained=pretrained).to(device).eval()
    image_tower = ImageTower(image_size=image_size, pretrained=pretrained).to(device).eval()
    fusion = SaviorEnc(config=fusion_config).to(device).eval()
    pixels = torch.rand(batch, 3, image_size, image_size) * 2 - 1  # generated posters
    timings = {"text_s": 0.0, "image_s": 0.0, "fusion_s": 0.0}
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    with torch.no_grad(), ctx:
        for start in range(-batch, items, batch):  # the first batch warms up and is not counted
            chunk = texts[max(start, 0):max(start, 0) + batch]
            flat = [t for fields in chunk for t in fields]
            t0 = time.perf_counter()
            enc = {k: v.to(device) for k, v in text_tower.tokenize(flat).items()}
            text = text_tower(**enc).float().reshape(len(chunk), 4, -1)
            _sync(device)
            t1 = time.perf_counter()
            image = image_tower(pixels[:len(chunk)].to(device)).float()
            _sync(device)
            t2 = time.perf_counter()
            fusion(text=text, text_mask=torch.ones(len(chunk), 4, dtype=torch.bool, device=device),
                   image=image, image_present=torch.ones(len(chunk), dtype=torch.bool, device=device))
            _sync(device)
            t3 = time.perf_counter()
            if start >= 0:
                for key, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    timings[key] += dt
    total = sum(timings.values())
    return {"items": items, "batch": batch, "image_size": image_size, "amp_bf16": amp, **timings,
            "items_per_s": items / total,
            "items_per_s_by_part": {k[:-2]: items / v for k, v in timings.items()}}


def bench_rqvae(*, items: int, levels: int, codebook: int, dim: int, batch: int,
                device: torch.device) -> dict:
    x = torch.nn.functional.normalize(torch.randn(items, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    x = x.to(device)
    model = RQVAE(config=RQVAEModelConfig(input_dim=dim, latent_dim=dim, hidden=(128,), levels=levels,
                                          codebook_size=codebook)).to(device)
    t0 = time.perf_counter()
    kmeans_init(model, x[: min(items, 256 * codebook)], seed=0)
    t1 = time.perf_counter()
    pairs = np.stack([np.arange(0, items - 1, 2), np.arange(1, items, 2)], axis=1)
    train_rqvae(model=model, x=x, pairs=pairs, epochs=1, batch_size=batch, lr=0.002, lambda_recon=1000.0,
                lambda_commit=0.5, temperature=0.07, dead_code_every=10, seed=0, kmeans=False)
    _sync(device)
    t2 = time.perf_counter()
    codes = torch.cat([model.semantic_codes(x[s:s + 65536]) for s in range(0, items, 65536)])
    _sync(device)
    t3 = time.perf_counter()
    return {"items": items, "levels": levels, "codebook_size": codebook, "dim": dim, "batch": batch,
            "kmeans_init_s": t1 - t0, "epoch_s": t2 - t1, "train_items_per_s": items / (t2 - t1),
            "assign_s": t3 - t2, "assign_items_per_s": items / (t3 - t2),
            "codes_in_range": bool(codes.min() >= 0 and codes.max() < codebook)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "movielens.yaml"),
                   help="sizes (image side, fusion, RQ-VAE levels and codes) from this config")
    p.add_argument("--device", default="auto")
    p.add_argument("--random-weights", action="store_true",
                   help="towers of the same architecture with random weights (timing only: a host "
                        "without the weight packages; set SAVIORREC_TEXT_MODEL_DIR to a folder "
                        "with the text model's config and tokenizer)")
    p.add_argument("--small", action="store_true", help="CPU-sized run")
    p.add_argument("--embed-items", type=int)
    p.add_argument("--rq-items", type=int)
    p.add_argument("--paper", action="store_true", help="RQ-VAE L=8, K=2048, batch 16384 (paper)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on the towers (GPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encoder_throughput.json"))
    args = p.parse_args()
    device = resolve_device(args.device)
    embed_items = args.embed_items or (64 if args.small else 8192)
    rq_items = args.rq_items or (50_000 if args.small else 1_000_000)
    cfg = load_config(args.config)
    rq = cfg.rqvae
    levels, codebook, batch = (8, 2048, 16384) if args.paper else (
        rq.levels, rq.codebook_size, 1024 if args.small else 16384)
    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": args.config,
        "embed": bench_embed(items=embed_items, batch=16 if args.small else 256,
                             image_size=cfg.encoder.image_size,
                             fusion_config=encoder_model_config(cfg, ("text", "image")),
                             device=device, amp=args.amp,
                             pretrained=not args.random_weights),
        "random_weights": args.random_weights,
        "rqvae": bench_rqvae(items=rq_items, levels=levels, codebook=codebook, dim=64, batch=batch, device=device),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
