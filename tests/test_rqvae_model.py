"""The quantizer's laws (codes in range, decode(codes) = quantized, utilisation measured), input
standardisation, the Sinkhorn phase of the schedule, seeding, k-means init, dead-code reseeding."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import encoder_torch.rqvae as rqvae_module
from encoder_torch.outputs import load_rqvae, save_checkpoint
from encoder_torch.rqvae import RQVAE, RQVAEModelConfig
from encoder_torch.semantic_ids import utilization_per_level
from encoder_torch.train_rqvae import kmeans_init, reseed_dead_codes, train_rqvae

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)  # k-means on a few hundred points: threads only add waiting
CFG = RQVAEModelConfig(input_dim=8, latent_dim=4, hidden=(16,), levels=3, codebook_size=8,
                       sinkhorn_iters=20)
TRAIN = {"lr": 0.01, "lambda_recon": 1000.0, "lambda_commit": 0.5, "temperature": 0.1,
         "dead_code_every": 2}


def _data(n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)


def _identity_encoder(cfg: RQVAEModelConfig) -> RQVAE:
    model = RQVAE(config=cfg)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(cfg.latent_dim))
        model.encoder[0].bias.zero_()
    return model


@pytest.mark.parametrize("balanced", [True, False])
def test_codes_in_range_and_decode_gives_quantized(balanced: bool) -> None:
    torch.manual_seed(0)
    model = RQVAE(config=CFG)
    x = _data()
    model.fit_input_scaling(x)
    out = model(x, balanced=balanced)
    assert out.codes.shape == (256, 3) and out.codes.dtype == torch.int64
    assert out.codes.min() >= 0 and out.codes.max() < 8
    # law: the sum of the code vectors named by the codes is the quantized latent
    expected = sum(model.codebooks[level, out.codes[:, level]] for level in range(3))
    assert torch.allclose(model.decode_codes(out.codes), expected)
    assert torch.allclose(model.decode_codes(out.codes), out.quantized, atol=1e-6)
    # straight-through: the forward value of x_hat is the decoded codes, in the input's units
    assert torch.allclose(model.decode(out.codes), out.x_hat, atol=1e-6)
    if not balanced:
        assert torch.equal(model.semantic_codes(x), out.codes)


def test_residuals_use_nearest_code_at_inference() -> None:
    torch.manual_seed(0)
    model = RQVAE(config=CFG)
    x = _data(32)
    model.fit_input_scaling(x)
    codes = model.semantic_codes(x)
    residual = model.encode(x)
    for level in range(3):
        dist = ((residual[:, None, :] - model.codebooks[level][None]) ** 2).sum(-1)  # [n, K]
        assert torch.equal(codes[:, level], dist.argmin(1))
        residual = residual - model.codebooks[level, codes[:, level]]


def test_input_standardisation_by_hand() -> None:
    torch.manual_seed(0)
    model = RQVAE(config=CFG)
    x = _data(64) * 0.01 + torch.arange(8.0)  # a narrow cloud far from the origin
    model.fit_input_scaling(x)
    xn = x.double().numpy()
    mean = xn.mean(axis=0)
    scale = np.sqrt(((xn - mean) ** 2).sum(axis=1).mean())
    assert np.allclose(model.input_mean.numpy(), mean, atol=1e-5)
    assert model.input_scale.item() == pytest.approx(scale, rel=1e-4)
    standardised = model.standardise(x)
    assert torch.allclose(standardised.mean(0), torch.zeros(8), atol=1e-4)
    assert standardised.square().sum(1).mean().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(model.encode(x), model.encoder((x - model.input_mean) / model.input_scale))


def test_checkpoint_without_standardisation_loads_as_identity(tmp_path) -> None:
    torch.manual_seed(0)
    model = RQVAE(config=CFG)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("input_")}
    torch.save({"config": CFG.__dict__, "state_dict": old}, tmp_path / "old.pt")
    again = load_rqvae(tmp_path / "old.pt")
    assert torch.equal(again.input_mean, torch.zeros(8)) and again.input_scale.item() == 1.0
    x = _data(16)
    assert torch.equal(again.semantic_codes(x), model.semantic_codes(x))
    assert torch.equal(again.encode(x), model.encoder(x))


def test_utilisation_is_measured() -> None:
    # one level, identity encoder, 4 codes by hand; the items sit next to codes 0, 1 and 3 only
    cfg = RQVAEModelConfig(input_dim=2, latent_dim=2, hidden=(), levels=1, codebook_size=4)
    model = _identity_encoder(cfg)
    with torch.no_grad():
        model.codebooks[0] = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    x = torch.tensor([[0.1, 0.2], [3.9, 0.1], [4.2, -0.3], [3.8, 4.1], [0.3, -0.2]])
    codes = model.semantic_codes(x)
    assert codes[:, 0].tolist() == [0, 1, 1, 3, 0]
    assert utilization_per_level(codes.numpy(), codebook_size=4) == [3 / 4]


def test_training_keeps_codes_in_range_and_in_use() -> None:
    # 8 clusters, K=8, Sinkhorn then nearest-code epochs: ids in range, utilisation as counted
    cfg = RQVAEModelConfig(input_dim=8, latent_dim=8, hidden=(16,), levels=2, codebook_size=8,
                           sinkhorn_iters=20)
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.eye(8).repeat_interleave(32, dim=0) + 0.3 * torch.randn(256, 8, generator=g)
    torch.manual_seed(0)
    model = RQVAE(config=cfg)
    train_rqvae(model=model, x=x, pairs=np.zeros((0, 2)), epochs=4, batch_size=128, seed=0, **TRAIN)
    codes = model.semantic_codes(x).numpy()
    assert codes.min() >= 0 and codes.max() < 8
    counted = [len(set(codes[:, level].tolist())) / 8 for level in range(2)]
    assert utilization_per_level(codes, codebook_size=8) == counted
    assert min(counted) >= 0.75


@pytest.mark.parametrize(("assignment", "fraction", "epochs_balanced"),
                         [("sinkhorn", 0.5, 2), ("sinkhorn", 1.0, 4), ("sinkhorn", 0.0, 0),
                          ("argmin", 1.0, 0)])
def test_sinkhorn_assigns_in_the_first_epochs_only(monkeypatch, assignment: str, fraction: float,
                                                   epochs_balanced: int) -> None:
    calls = []
    real = rqvae_module.sinkhorn_assign

    def counting(cost: torch.Tensor, **kwargs: float) -> torch.Tensor:
        calls.append(len(cost))
        return real(cost, **kwargs)

    monkeypatch.setattr(rqvae_module, "sinkhorn_assign", counting)
    cfg = RQVAEModelConfig(**{**CFG.__dict__, "assignment": assignment})
    torch.manual_seed(0)
    model = RQVAE(config=cfg)
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    train_rqvae(model=model, x=_data(128), pairs=pairs, epochs=4, batch_size=64, seed=0,
                sinkhorn_fraction=fraction, **TRAIN)
    # per balanced epoch: 2 steps x (the batch of 64 + the 2 x 3 pair rows) x 3 levels
    assert calls == [64, 64, 64, 6, 6, 6] * 2 * epochs_balanced


def test_same_seed_same_ids() -> None:
    x, pairs = _data(), np.array([[0, 1], [2, 3], [4, 5], [6, 7]])

    def run() -> torch.Tensor:
        torch.manual_seed(3)
        model = RQVAE(config=CFG)
        train_rqvae(model=model, x=x, pairs=pairs, epochs=3, batch_size=64, seed=3, **TRAIN)
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
        train_rqvae(model=model, x=x, pairs=pairs, epochs=2, batch_size=1024, seed=seed,
                    sinkhorn_fraction=1.0, **TRAIN)
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
    # 4 tight clusters seen through an identity encoder; K=4, one level
    cfg = RQVAEModelConfig(input_dim=2, latent_dim=2, hidden=(), levels=1, codebook_size=4)
    model = _identity_encoder(cfg)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    g = torch.Generator().manual_seed(0)
    x = (centres[:, None, :] + 0.05 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    kmeans_init(model, x, seed=0)
    # the codes live in the standardised space: mean ~0, rms distance to it ~sqrt(50)
    standardised = (centres - x.mean(0)) / x.sub(x.mean(0)).square().sum(1).mean().sqrt()
    dist = torch.cdist(model.codebooks[0], standardised)  # [K, 4]
    assert dist.min(dim=0).values.max() < 0.02  # every centre has a code on it
    assert len(set(dist.argmin(dim=1).tolist())) == 4


def test_dead_code_is_reseeded_onto_data() -> None:
    cfg = RQVAEModelConfig(input_dim=2, latent_dim=2, hidden=(), levels=1, codebook_size=3)
    model = _identity_encoder(cfg)  # unstandardised: input_mean 0, input_scale 1
    with torch.no_grad():
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
    model = RQVAE(config=CFG)
    model.fit_input_scaling(_data() + 1.0)
    version = save_checkpoint(tmp_path / "rq.pt", model=model, config=model.config)
    again = load_rqvae(tmp_path / "rq.pt")
    assert again.config == CFG and len(version) == 12
    assert torch.equal(again.input_mean, model.input_mean)
    assert torch.equal(again.semantic_codes(_data()), model.semantic_codes(_data()))


def test_bad_assignment_is_an_error() -> None:
    with pytest.raises(ValueError, match="assignment"):
        RQVAEModelConfig(assignment="greedy")


def test_model_config_is_the_run_configs_rqvae_section() -> None:
    """Every default is the run config's (saviorrec.config, defined once); from_run copies a
    run's values and takes the three the run decides."""
    from dataclasses import fields

    from saviorrec.config import EncoderConfig, RQVAEConfig

    names = [f.name for f in fields(RQVAEModelConfig)]
    shared = [n for n in names if n not in ("input_dim", "codebook_size", "assignment")]
    assert set(shared) <= set(RQVAEConfig.model_fields)  # nothing the run config lacks
    defaults, run_defaults = RQVAEModelConfig(), RQVAEConfig()
    assert {n: getattr(defaults, n) for n in names if n != "input_dim"} == {
        n: getattr(run_defaults, n) for n in names if n != "input_dim"}
    assert defaults.input_dim == EncoderConfig().dim
    rc = RQVAEConfig(latent_dim=16, hidden=(32, 8), levels=2, sinkhorn_epsilon=0.1,
                     sinkhorn_iters=7, beta=0.5, codebook_size=64, assignment="sinkhorn")
    got = RQVAEModelConfig.from_run(rc, input_dim=12, codebook_size=128, assignment="argmin")
    assert got == RQVAEModelConfig(input_dim=12, latent_dim=16, hidden=(32, 8), levels=2,
                                   codebook_size=128, assignment="argmin", sinkhorn_epsilon=0.1,
                                   sinkhorn_iters=7, beta=0.5)
