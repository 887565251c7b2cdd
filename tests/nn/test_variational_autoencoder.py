import math

import pytest
import torch

from milsdk.nn import VariationalAutoEncoder, VariationalAutoEncoderMIL


def _nearly_deterministic(vae):
    """Posterior std e^-30 (build it with jitter 0): every sample equals the mean to ~1e-13, so losses are
    reproducible whatever the random draws."""
    last = vae.encoder.mlp[-2]
    with torch.no_grad():
        last.weight[vae.latent_dim :].zero_()
        last.bias[vae.latent_dim :].fill_(-30.0)
    return vae


def _constant_vae(enc_bias, dec_bias, input_dim=2, latent=2):
    """One-layer VAE whose encoder and decoder ignore their input: q(z|x) and p(x|z) are fixed Gaussians."""
    vae = VariationalAutoEncoder(
        input_shape=(input_dim,), layer_sizes=[latent], activations=["none"], jitter=0.0
    )
    with torch.no_grad():
        for layer, bias in ((vae.encoder.mlp[0], enc_bias), (vae.decoder.mlp[0], dec_bias)):
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor(bias))
    return vae


@pytest.mark.parametrize("covar_mode", ["single", "diagonal"])
def test_shapes_instance_and_bag_versions(covar_mode):
    vae = VariationalAutoEncoder(input_shape=(6,), layer_sizes=[5, 3], covar_mode=covar_mode)
    X = torch.randn(4, 6)
    assert vae(X).shape == (4, 1, 3)
    samples, mean, log_std = vae(X, n_samples=7, return_mean_logstd=True)
    assert samples.shape == (4, 7, 3) and mean.shape == (4, 3) and log_std.shape == (4, 3)
    assert vae.get_raw_output_enc(X)[1].shape == (4, 1 if covar_mode == "single" else 3)
    assert [t.shape for t in vae.get_raw_output_dec(mean)] == [(4, 6), (4, 6)]
    assert vae.complete_forward_samples(X, n_samples=2).shape == (4, 6)
    assert vae.log_marginal_likelihood_importance_sampling(X, n_samples=5).shape == (4,)
    losses, used = vae.compute_loss(X, reduction="none", n_samples=3, return_samples=True)
    assert set(losses) == {"VaeELL", "VaeKL"} and losses["VaeKL"].shape == (4,) and used.shape == (4, 3, 3)

    bag_vae = VariationalAutoEncoderMIL(input_shape=(6,), layer_sizes=[5, 3], covar_mode=covar_mode)
    Xb = torch.randn(2, 9, 6)
    assert bag_vae(Xb, n_samples=4).shape == (2, 9, 4, 3)
    assert [t.shape for t in bag_vae(Xb, return_mean_logstd=True)[1:]] == [(2, 9, 3), (2, 9, 3)]
    assert bag_vae.complete_forward_samples(Xb).shape == (2, 9, 6)
    assert bag_vae.log_marginal_likelihood_importance_sampling(Xb, n_samples=3).shape == (2, 9)
    _, used = bag_vae.compute_loss(Xb, n_samples=2, return_samples=True)
    assert used.shape == (2, 9, 2, 3)


def test_multi_axis_instances_are_flattened():
    vae = VariationalAutoEncoderMIL(input_shape=(2, 3), layer_sizes=[4])
    X = torch.randn(2, 5, 2, 3)
    assert vae(X).shape == (2, 5, 1, 4)
    assert vae.complete_forward_samples(X).shape == X.shape


def test_activations_are_used_and_checked():
    vae = VariationalAutoEncoder(input_shape=(4,), layer_sizes=[6, 3], activations=["tanh", "sigmoid"]).eval()
    assert isinstance(vae.encoder.mlp[1], torch.nn.Tanh) and isinstance(vae.decoder.mlp[1], torch.nn.Tanh)
    mean = vae(100 * torch.randn(50, 4))[:, 0]
    assert mean.min() >= 0 and mean.max() <= 1  # the sigmoid acts on the latent mean
    with pytest.raises(ValueError, match="one per layer"):
        VariationalAutoEncoder(input_shape=(4,), layer_sizes=[6, 3], activations=["relu"])
    with pytest.raises(ValueError, match="covar_mode"):
        VariationalAutoEncoder(covar_mode="full")


def test_default_activations_are_relu_then_none_for_any_depth():
    vae = VariationalAutoEncoder(input_shape=(4,), layer_sizes=[8, 6, 2])
    assert vae.activations == ["relu", "relu", "none"]


def test_eval_is_deterministic_and_returns_the_posterior_mean():
    torch.manual_seed(0)
    vae = VariationalAutoEncoderMIL(input_shape=(5,), layer_sizes=[4, 3])
    X = torch.randn(2, 6, 5)
    assert not torch.equal(vae(X), vae(X))  # training: random samples
    vae.eval()
    out = vae(X, n_samples=3)
    mean, _ = vae.get_raw_output_enc(X)
    assert torch.equal(out, vae(X, n_samples=3))
    assert torch.equal(out, mean.unsqueeze(2).expand(2, 6, 3, 3))
    rec, _ = vae.get_raw_output_dec(mean)
    assert torch.allclose(vae.complete_forward_samples(X, n_samples=4), rec)


def test_kl_of_standard_normal_posterior_is_zero_and_a_hand_computed_case():
    x = torch.tensor([[1.0, -1.0]])
    standard = _constant_vae(enc_bias=[0.0, 0.0, 0.0], dec_bias=[0.0, 0.0, 0.0])
    assert standard.compute_loss(x)["VaeKL"].item() == 0.0
    # q = N((1, 2), diag(2^2, 2^2)): KL = 1/2 sum(sigma^2 + mu^2 - 1 - 2 log sigma) = 5.5 - 2 log 2
    shifted = _constant_vae(enc_bias=[1.0, 2.0, math.log(2.0)], dec_bias=[0.0, 0.0, 0.0])
    assert shifted.compute_loss(x)["VaeKL"].item() == pytest.approx(5.5 - 2 * math.log(2.0), rel=1e-6)


def test_expected_log_likelihood_hand_computed():
    # p(x|z) = N((0.5, 0), e^{2 * 0.3} I) whatever z:
    # -log p = 1/2 sum((x - mu)^2 / sigma^2) + D log sigma + D/2 log 2 pi
    vae = _constant_vae(enc_bias=[0.0, 0.0, 0.0], dec_bias=[0.5, 0.0, 0.3])
    x = torch.tensor([[1.0, -1.0]])
    sigma2 = math.exp(0.6)
    expected = 0.5 * (0.25 + 1.0) / sigma2 + 2 * 0.3 + math.log(2 * math.pi)
    assert vae.compute_loss(x, n_samples=5)["VaeELL"].item() == pytest.approx(expected, rel=1e-6)


def test_importance_sampling_uses_a_standard_normal_prior():
    # proposal q = prior N(0, I): every weight p(z)/q(z) is exactly 1, so log p(x) = log p(x|z) for any
    # samples (the reference scored the prior with log-std 1 and got a different number)
    vae = _constant_vae(enc_bias=[0.0, 0.0, 0.0], dec_bias=[0.5, 0.0, 0.3])
    x = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    want = -vae.compute_loss(x, reduction="none")["VaeELL"]
    got = vae.log_marginal_likelihood_importance_sampling(x, n_samples=16)
    assert torch.allclose(got, want, atol=1e-5)


def test_mil_loss_applies_the_mask():
    torch.manual_seed(0)
    vae = _nearly_deterministic(VariationalAutoEncoderMIL(input_shape=(4,), layer_sizes=[5, 3], jitter=0.0))
    bags = [torch.randn(n, 4) for n in (3, 6, 1)]
    X = torch.full((3, 6, 4), 1e3)  # padding content must not reach the loss
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : len(b)] = b
        mask[i, : len(b)] = True
    real = torch.cat(bags).unsqueeze(0)
    want = vae.compute_loss(real, reduction="none")
    for m in (mask, mask.to(torch.uint8)):
        got_mean = vae.compute_loss(X, m)
        got_sum = vae.compute_loss(X, m, reduction="sum")
        got_none = vae.compute_loss(X, m, reduction="none")
        for key in ("VaeELL", "VaeKL"):
            assert torch.allclose(got_mean[key], want[key].mean(), rtol=1e-5)
            assert torch.allclose(got_sum[key], want[key].sum(), rtol=1e-5)
            assert torch.all(got_none[key][~mask] == 0)
            assert torch.allclose(got_none[key][mask], want[key][0], rtol=1e-5)
    X[0, 5] = float("inf")  # not even inf padding reaches the loss or its gradient
    loss = vae.compute_loss(X, mask)
    sum(loss.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters())
    assert torch.allclose(loss["VaeKL"], want["VaeKL"].mean(), rtol=1e-5)
    nothing = vae.compute_loss(X, torch.zeros(3, 6, dtype=torch.bool))
    assert all(v.item() == 0.0 for v in nothing.values())
    log_px = vae.log_marginal_likelihood_importance_sampling(X, mask, n_samples=2)
    assert torch.all(log_px[~mask] == 0) and torch.isfinite(log_px).all()


def test_padding_never_changes_real_instances():
    torch.manual_seed(0)
    vae = VariationalAutoEncoderMIL(input_shape=(4,), layer_sizes=[5, 3]).eval()
    X = torch.randn(1, 3, 4)
    padded = torch.cat([X, 50 * torch.randn(1, 8, 4)], dim=1)
    assert torch.allclose(vae(padded)[:, :3], vae(X), atol=1e-6)


def test_bad_reduction_raises():
    vae = VariationalAutoEncoderMIL(input_shape=(4,), layer_sizes=[3])
    with pytest.raises(ValueError, match="reduction"):
        vae.compute_loss(torch.randn(1, 2, 4), reduction="avg")


def test_survives_torchscript():
    vae = VariationalAutoEncoderMIL(input_shape=(4,), layer_sizes=[5, 3], covar_mode="diagonal").eval()
    X = torch.randn(2, 7, 4)
    scripted = torch.jit.script(vae)
    assert torch.equal(scripted(X, 2), vae(X, 2))
    assert scripted.train()(X, 3).shape == (2, 7, 3, 3)
