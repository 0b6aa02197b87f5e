"""The quantizer's laws (codes in range, decode(codes) = quantized), seeding, k-means init and
dead-code reseeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder_torch.outputs import load_rqvae, save_checkpoint
from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
from encoder_torch.train_rqvae import kmeans_init, reseed_dead_codes, train_rqvae

torch.set_num_threads(1)
CFG = RQVAEModelConfig(input_dim=8, latent_dim=4, hidden=(16,), levels=3, codebook_size=8,
                       sinkhorn_iters=20)


def _data(n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)


@pytest.mark.parametrize("assignment", ["sinkhorn", "argmin"])
def test_codes_in_range_and_decode_gives_quantized(assignment: str) -> None:
    torch.manual_seed(0)
    model = RQVAE(config=RQVAEModelConfig(**{**CFG.__dict__, "assignment": assignment}))
    x = _data()
    for training in (True, False):
        model.train(training)
        out = model(x)
        assert out.codes.shape == (256, 3) and out.codes.dtype == torch.int64
        assert out.codes.min() >= 0 and out.codes.max() < 8
        # law: the sum of the code vectors named by the codes is the quantized latent
        expected = sum(model.codebooks[level, out.codes[:, level]] for level in range(3))
        assert torch.allclose(model.decode_codes(out.codes), expected)
        assert torch.allclose(model.decode_codes(out.codes), out.quantized, atol=1e-6)
    model.eval()
    out = model(x)
    # straight-through: forward value of x_hat is Dec(quantized) exactly
    assert torch.allclose(model.decode(out.codes), out.x_hat, atol=1e-6)
    assert torch.equal(model.semantic_codes(x), out.codes)


def test_residuals_use_nearest_code_at_inference() -> None:
    torch.manual_seed(0)
    model = RQVAE(config=CFG).eval()
    x = _data(32)
    codes = model.semantic_codes(x)
    residual = model.encoder(x)
    for level in range(3):
        dist = ((residual[:, None, :] - model.codebooks[level][None]) ** 2).sum(-1)  # [n, K]
        assert torch.equal(codes[:, level], dist.argmin(1))
        residual = residual - model.codebooks[level, codes[:, level]]


def test_same_seed_same_ids() -> None:
    x, pairs = _data(), np.array([[0, 1], [2, 3], [4, 5], [6, 7]])

    def run() -> torch.Tensor:
        torch.manual_seed(3)
        model = RQVAE(config=CFG)
        train_rqvae(model=model, x=x, pairs=pairs, epochs=3, batch_size=64, lr=0.01,
                    lambda_recon=1000.0, lambda_commit=0.5, temperature=0.1, dead_code_every=2, seed=3)
        return model.semantic_codes(x)

    assert torch.equal(run(), run())


def test_seed_alone_decides_ids_and_codebooks_with_threads() -> None:
    """Same seed -> bit-identical ids and codebooks; another seed -> different ones. Run with 2
    threads and gathers of >= 32768 elements (batch 1024 x latent 64), where the backward of
    ``codebooks[level][code]`` (parallel index_put_ with atomic float adds) was nondeterministic."""
    cfg = RQVAEModelConfig(input_dim=16, latent_dim=64, hidden=(32,), levels=2, codebook_size=16,
                           sinkhorn_iters=10)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(1024, 16, generator=g), dim=1)
    pairs = torch.randint(1024, (512, 2), generator=g).numpy()
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)  # as rq_stage.fit
        model = RQVAE(config=cfg)
        train_rqvae(model=model, x=x, pairs=pairs, epochs=3, batch_size=1024, lr=0.01,
                    lambda_recon=1000.0, lambda_commit=0.5, temperature=0.1, dead_code_every=2,
                    seed=seed)
        return model.semantic_codes(x), model.codebooks.detach().clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (ids_a, books_a), (ids_b, books_b), (ids_c, books_c) = run(0), run(0), run(1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(ids_a, ids_b)
    assert torch.equal(books_a, books_b)  # bit for bit
    assert not torch.equal(ids_a, ids_c)
    assert not torch.equal(books_a, books_c)


def test_kmeans_init_puts_codes_on_clusters() -> None:
    # 4 tight clusters in the latent space of an identity encoder; K=4, one level
    cfg = RQVAEModelConfig(input_dim=2, latent_dim=2, hidden=(), levels=1, codebook_size=4)
    model = RQVAE(config=cfg)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(2))
        model.encoder[0].bias.zero_()
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    g = torch.Generator().manual_seed(0)
    x = (centres[:, None, :] + 0.05 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    kmeans_init(model, x, seed=0)
    dist = torch.cdist(model.codebooks[0], centres)  # [K, 4]
    assert dist.min(dim=0).values.max() < 0.1  # every centre has a code on it
    assert len(set(dist.argmin(dim=1).tolist())) == 4


def test_dead_code_is_reseeded_onto_data() -> None:
    cfg = RQVAEModelConfig(input_dim=2, latent_dim=2, hidden=(), levels=1, codebook_size=3)
    model = RQVAE(config=cfg)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(2))
        model.encoder[0].bias.zero_()
        model.codebooks[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])  # code 2 dead
    x = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.1, 1.0], [0.0, 0.8]])
    assert set(model.semantic_codes(x)[:, 0].tolist()) == {0, 1}
    reseeded = reseed_dead_codes(model, x, generator=torch.Generator().manual_seed(0))
    assert reseeded == [1]
    assert torch.equal(model.codebooks[0, :2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # live kept
    assert (model.codebooks[0, 2] == x).all(dim=1).any()  # moved onto one of the data rows
    assert 2 in model.semantic_codes(x)[:, 0].tolist()


def test_checkpoint_rebuilds_the_model(tmp_path) -> None:
    torch.manual_seed(0)
    model = RQVAE(config=CFG).eval()
    version = save_checkpoint(tmp_path / "rq.pt", model=model, config=model.config)
    again = load_rqvae(tmp_path / "rq.pt").eval()
    assert again.config == CFG and len(version) == 12
    assert torch.equal(again.semantic_codes(_data()), model.semantic_codes(_data()))


def test_bad_assignment_is_an_error() -> None:
    with pytest.raises(ValueError, match="assignment"):
        RQVAEModelConfig(assignment="greedy")
