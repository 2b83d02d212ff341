"""Evaluation maths: likelihood estimators against closed forms, memorization and the grid picture."""

from __future__ import annotations

import math

import pytest
import torch

from unlearning_trainer.evaluation import grids, likelihood, metrics
from unlearning_trainer.scenarios import builders

SCHEDULER = builders.ddpm_scheduler()
ALPHAS, BETAS = SCHEDULER.alphas_cumprod.double(), SCHEDULER.betas.double()


def _image(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 4, 4), generator=g).float() / 127.5 - 1


def _oracle_for(x_star: torch.Tensor):
    """The optimal ε-predictor for a data set holding only x*: ε̂(m, t) = (m − γ_t x*)/σ_t."""

    def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = ALPHAS[t].float().view(-1, 1, 1, 1)
        return (m - abar.sqrt() * x_star) / (1 - abar).sqrt()

    return denoise


def test_discretized_gaussian_sums_to_one_over_the_8_bit_bins():
    bins = torch.arange(256).double() / 127.5 - 1
    log_p = metrics.discretized_gaussian_log_likelihood(bins, torch.tensor(0.1).double(), torch.tensor(-1.0).double())
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_gaussian_log_likelihood_is_the_normal_density():
    x, mean, log_scale = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), torch.rand(5)
    expected = torch.distributions.Normal(mean, log_scale.double().exp()).log_prob(x)
    assert torch.allclose(metrics.gaussian_log_likelihood(x, mean, log_scale.double()), expected)


def test_normal_kl_is_zero_for_equal_gaussians_and_matches_closed_form():
    zero = torch.zeros(3)
    assert metrics.normal_kl(zero, zero, zero, zero).abs().max() == 0
    kl = metrics.normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(4.0)))
    assert kl.item() == pytest.approx(0.5 * (math.log(4) + (1 + 1) / 4 - 1))


def test_vlb_of_the_oracle_is_the_decoder_bin_mass_on_its_image_and_large_elsewhere():
    """Under the oracle every KL term vanishes and only the decoder's bin probability remains: its variance is
    the fixed β̃_1, so P(bin) = erf((1/255)/(√β̃_1 √2)) per pixel (interior pixels only in this image)."""
    x_star = _image(0)
    assert x_star.abs().max() < 1
    oracle = _oracle_for(x_star)
    nll_star = likelihood.vlb_nll(oracle, x_star, ALPHAS, BETAS, terms=1000, generator=torch.Generator().manual_seed(0))
    nll_other = likelihood.vlb_nll(
        oracle, _image(1), ALPHAS, BETAS, terms=1000, generator=torch.Generator().manual_seed(0)
    )
    posterior_var_1 = BETAS[1] * (1 - ALPHAS[0]) / (1 - ALPHAS[1])
    bin_mass = math.erf((1 / 255) / math.sqrt(2 * posterior_var_1))
    assert metrics.bits_per_dim(nll_star, x_star.numel()).item() == pytest.approx(-math.log2(bin_mass), abs=0.01)
    assert metrics.bits_per_dim(nll_other, x_star.numel()).item() > 10


def _gaussian_optimal(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The optimal ε-predictor for data ~ N(0, I): ε̂(m, t) = σ_t m."""
    return (1 - ALPHAS[t].float()).sqrt().view(-1, 1, 1, 1) * m


def _vlb(denoise, x: torch.Tensor, terms: int, seed: int) -> float:
    return likelihood.vlb_nll(
        denoise, x, ALPHAS, BETAS, terms=terms, generator=torch.Generator().manual_seed(seed)
    ).item()


def test_vlb_subsampling_is_an_unbiased_estimate_of_the_full_bound():
    x = _image(2)
    full = sum(_vlb(_gaussian_optimal, x, 1000, seed) for seed in range(6)) / 6
    sub = sum(_vlb(_gaussian_optimal, x, 100, seed) for seed in range(6)) / 6
    assert sub == pytest.approx(full, rel=0.1)
    sharp = _oracle_for(_image(3))
    assert _vlb(sharp, x, 200, 0) == pytest.approx(_vlb(sharp, x, 1000, 0), rel=0.02)


def test_pf_ode_likelihood_of_gaussian_data_is_exact():
    """For data ~ N(0, I) the optimal ε̂(x, t) = σ_t x makes the drift vanish: log p0(x) = log N(x; 0, I)."""
    x = _image(4) * 0.8
    nats = likelihood.pf_ode_nll(_gaussian_optimal, x, ALPHAS, beta_min=0.1, beta_max=20.0, generator=torch.Generator())
    dims = x.numel()
    expected = 0.5 * dims * math.log(2 * math.pi) + 0.5 * x.pow(2).sum().item() + 7 * dims * math.log(2)
    assert nats.item() == pytest.approx(expected, rel=1e-4)


def test_pf_ode_likelihood_is_higher_for_the_memorized_image():
    x_star = _image(5) * 0.5
    oracle = _oracle_for(x_star)
    kwargs = {"beta_min": 0.1, "beta_max": 20.0, "generator": torch.Generator().manual_seed(0), "tolerance": 1e-4}
    assert likelihood.pf_ode_nll(oracle, x_star, ALPHAS, **kwargs) < likelihood.pf_ode_nll(
        oracle, _image(6) * 0.5, ALPHAS, **kwargs
    )


def test_memorization_rate_counts_samples_below_the_threshold():
    references = torch.zeros(1, 1, 2, 2)
    samples = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.2, 0.6, 1.0)])
    distances = metrics.nearest_distances(samples, references)
    torch.testing.assert_close(distances, torch.tensor([0.0, 0.4, 1.2, 2.0], dtype=torch.float64))
    assert metrics.memorization_rate(distances, 1.0) == 0.5


def test_nearest_distance_takes_the_closest_reference():
    references = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    distances = metrics.nearest_distances(torch.full((1, 1, 2, 2), 0.9), references)
    assert distances.item() == pytest.approx(0.2)


def test_grid_tiles_and_upscales(tmp_path):
    images = torch.rand(10, 1, 8, 8)
    path = grids.save_grid(images, tmp_path / "grid.png")
    from PIL import Image

    with Image.open(path) as picture:
        assert picture.size == (4 * 65 + 1, 3 * 65 + 1)


def test_the_rms_threshold_is_the_l2_threshold_at_any_resolution():
    from unlearning_trainer.spec import EvaluationSpec

    assert EvaluationSpec(memorizationThreshold=7.0).l2_threshold(256) == 7.0
    rms = EvaluationSpec(memorizationThreshold=7.0, memorizationThresholdRms=0.25)
    assert rms.l2_threshold(16 * 16) == pytest.approx(4.0)
    assert rms.l2_threshold(512 * 512 * 3) == pytest.approx(0.25 * math.sqrt(512 * 512 * 3))


def test_only_linear_schedules_count_as_linear_for_the_ode():
    from diffusers import DDPMScheduler

    assert likelihood.is_linear(DDPMScheduler(beta_schedule="linear").betas)
    for schedule in ("scaled_linear", "squaredcos_cap_v2"):
        assert not likelihood.is_linear(DDPMScheduler(beta_schedule=schedule).betas)


def test_pf_ode_is_refused_for_a_schedule_it_cannot_model(scenario, tmp_path):
    """The evaluator reads T and β from the scheduler; pf-ode only knows the linear schedule, so it refuses."""
    import shutil

    from unlearning_trainer.data.images import load_images
    from unlearning_trainer.data.sources import open_source
    from unlearning_trainer.errors import SpecError
    from unlearning_trainer.evaluation.evaluator import Evaluator
    from unlearning_trainer.models.loading import load_adapter
    from unlearning_trainer.spec import EvaluationSpec

    shutil.copytree(scenario / "model", tmp_path / "model")
    config = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"linear"', '"squaredcos_cap_v2"'))
    adapter = load_adapter(tmp_path / "model")
    forget = load_images(open_source(scenario / "forget", field="f"), adapter.image_shape)
    spec = EvaluationSpec(nll={"method": "pf-ode"})
    with pytest.raises(SpecError, match=r"not linear \('squaredcos_cap_v2'\)\. Fix: use vlb"):
        Evaluator(adapter, spec, forget=forget, retain=forget, samples_dir=tmp_path, device=torch.device("cpu"))
