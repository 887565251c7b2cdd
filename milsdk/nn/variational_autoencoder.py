r"""Gaussian variational autoencoders over instance features (Kingma & Welling, "Auto-Encoding Variational
Bayes", ICLR 2014), as used by VAEABMIL (Fuster et al., 2025, "Using Variational Autoencoders for Out of
Distribution Detection in Histological Multiple Instance Learning").

Posterior :math:`q(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag} \sigma_\phi(x)^2)`, likelihood
:math:`p(x \mid z) = \mathcal N(\mu_\theta(z), \operatorname{diag} \sigma_\theta(z)^2)`, prior
:math:`p(z) = \mathcal N(0, I)`. Training maximises the evidence lower bound

.. math:: \mathrm{ELBO}(x) = \mathbb E_{q(z \mid x)}[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\|\, p(z)),

whose two terms ``compute_loss`` returns, signs chosen so that both are minimised: ``VaeELL`` = minus the
expected log-likelihood (a Monte Carlo estimate), ``VaeKL`` = the KL divergence (closed form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from milsdk.nn.masked import as_bool_mask
from milsdk.nn.mlp import MLP, make_activation

__all__ = ["VariationalAutoEncoder", "VariationalAutoEncoderMIL"]

_COVAR_MODES = ("single", "diagonal")
_REDUCTIONS = ("mean", "sum", "none")
_LOG_2PI = math.log(2.0 * math.pi)


def _diagonal_gaussian_log_pdf(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathcal N(x; \mu, \operatorname{diag} \sigma^2)` summed over the last axis.

    Args:
        x, mean, log_std: (..., K), broadcastable.

    Returns:
        (...) log-densities.
    """
    z = (x - mean) * torch.exp(-log_std)
    return -0.5 * (z * z + 2.0 * log_std + _LOG_2PI).sum(dim=-1)


def _kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal N(0, I))
    = \tfrac12 \sum_k (\sigma_k^2 + \mu_k^2 - 1 - 2 \log \sigma_k)` over the last axis: (..., L) -> (...)."""
    return 0.5 * (torch.exp(2.0 * log_std) + mean * mean - 1.0 - 2.0 * log_std).sum(dim=-1)


def _with_sample_axis(t: torch.Tensor, n_samples: int) -> torch.Tensor:
    """(..., L) -> (..., n_samples, L), the same vector repeated."""
    t = t.unsqueeze(-2)
    if n_samples == 1:
        return t
    return t.repeat_interleave(n_samples, dim=-2)


def _zero_padding(X: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """X (B, N, ...) with padded instances set to 0: whatever the padding holds (even inf), neither the
    masked losses nor their gradients (0 * inf = NaN) can see it."""
    return torch.where(real.reshape(real.shape + (1,) * (X.dim() - 2)), X, torch.zeros_like(X))


class VariationalAutoEncoder(torch.nn.Module):
    r"""Gaussian VAE on single instances: X (batch, \*input_shape) -> latent samples (batch, S, L).

    The encoder is an MLP ``D -> layer_sizes[0] -> ... -> layer_sizes[-1]`` (L = ``layer_sizes[-1]``, the
    latent size; D = prod(input_shape), inputs are flattened) whose last layer outputs the posterior mean and
    log-std; the decoder mirrors it, ``L -> layer_sizes[-2] -> ... -> layer_sizes[0] -> D``, and outputs the
    likelihood mean and log-std.

    ``activations[i]`` follows encoder layer i, and in the decoder the layer that outputs ``layer_sizes[i]``
    (i < len - 1) is followed by the same ``activations[i]``. ``activations[-1]`` is applied to the posterior
    mean (the latent code) only. Log-stds and the likelihood mean never get an activation (Gaussian parameters
    are unbounded). The default, ReLU on hidden layers and none on the latent, is the reference's fixed choice
    (the reference stores ``activations`` but does not use it).

    The posterior std is :math:`\sigma = e^{s} + \text{jitter}` (s the encoder's log-std output), used alike
    for sampling, the KL and the importance weights, so that it never collapses to 0.

    Sampling: ``forward`` and ``complete_forward_samples`` draw reparameterised samples in training mode and
    use the posterior mean in eval mode (repeated ``n_samples`` times), so that an eval model is deterministic
    and exports without random ops. ``get_posterior_samples`` / ``get_reparameterized_samples`` always sample,
    and so do the Monte Carlo estimators ``compute_loss`` and ``log_marginal_likelihood_importance_sampling``
    (seed with ``torch.manual_seed`` to repeat them).

    Args:
        input_shape: shape of one instance, e.g. (512,); flattened to D = prod(input_shape).
        layer_sizes: encoder layer sizes, the last one being the latent size L.
        activations: one activation name per layer ('relu', 'tanh', 'gelu', 'sigmoid', 'none' / None, ...);
            None = ReLU after every hidden layer and none on the latent.
        covar_mode: 'single' (one std shared by all dimensions, per instance) or 'diagonal' (one per
            dimension), for both the posterior and the likelihood.
        jitter: floor added to the posterior std.
    """

    # leading axes of X that index instances (1 here: (batch, *input_shape); 2 for bags: (B, N,
    # *input_shape)); a constant, so that TorchScript reads the class attribute
    __constants__ = ["batch_dims"]
    batch_dims: int = 1

    def __init__(
        self,
        input_shape: Sequence[int] = (512,),
        layer_sizes: Sequence[int] = (128, 64),
        activations: Sequence[str | None] | None = None,
        covar_mode: str = "single",
        jitter: float = 1e-7,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        layer_sizes = [int(s) for s in layer_sizes]
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(
                f"{name}: layer_sizes must be a non-empty list of positive sizes, got {layer_sizes}"
            )
        if activations is None:
            activations = ["relu"] * (len(layer_sizes) - 1) + ["none"]
        activations = ["none" if a is None else str(a) for a in activations]
        if len(activations) != len(layer_sizes):
            raise ValueError(
                f"{name}: {len(layer_sizes)} layer_sizes but {len(activations)} activations; "
                "give one per layer"
            )
        if covar_mode not in _COVAR_MODES:
            raise ValueError(f"{name}: covar_mode must be one of {_COVAR_MODES}, got {covar_mode!r}")
        if jitter < 0:
            raise ValueError(f"{name}: jitter must be >= 0, got {jitter}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_dim = math.prod(self.input_shape)
        self.layer_sizes = layer_sizes
        self.activations = activations
        self.covar_mode = covar_mode
        self.jitter = float(jitter)
        self.log_jitter = math.log(jitter) if jitter > 0 else -math.inf
        self.latent_dim = layer_sizes[-1]
        self.single_covar = covar_mode == "single"
        self.d_var_enc = 1 if self.single_covar else self.latent_dim
        self.d_var_dec = 1 if self.single_covar else self.input_dim

        hidden, hidden_acts = layer_sizes[:-1], activations[:-1]
        self.encoder = MLP(
            self.input_dim, hidden + [self.latent_dim + self.d_var_enc], hidden_acts + ["none"]
        )
        self.latent_act = make_activation(activations[-1])
        self.decoder = MLP(
            self.latent_dim, hidden[::-1] + [self.input_dim + self.d_var_dec], hidden_acts[::-1] + ["none"]
        )

    # -- encoder / decoder ------------------------------------------------------------------------------
    def _flatten(self, X: torch.Tensor) -> torch.Tensor:
        """(*lead, *input_shape) -> (*lead, D)."""
        if X.dim() == self.batch_dims + 1:
            return X
        return X.flatten(start_dim=self.batch_dims)

    def get_raw_output_enc(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters as the encoder outputs them.

        Args:
            X: (batch, *input_shape) (for the MIL version (B, N, *input_shape)).

        Returns:
            mean: (batch, L), after ``activations[-1]``; log_std: (batch, d_var_enc) raw log-std output
            (d_var_enc = 1 for 'single', L for 'diagonal'), before the jitter.
        """
        out = self.encoder(self._flatten(X))
        mean = self.latent_act(out[..., : self.latent_dim])
        return mean, out[..., self.latent_dim :]

    def posterior(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and log-std of :math:`q(z \mid x)`, both (batch, L) (the log-std includes the jitter).

        Args:
            X: (batch, *input_shape) (for the MIL version (B, N, *input_shape)).
        """
        mean, raw_log_std = self.get_raw_output_enc(X)
        log_std = torch.logaddexp(raw_log_std, torch.full_like(raw_log_std, self.log_jitter))
        return mean, log_std.expand_as(mean)

    def get_raw_output_dec(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and log-std of the likelihood :math:`p(x \mid z)`.

        Args:
            samples: (..., L) latent vectors.

        Returns:
            mean: (..., D); log_std: (..., D) (the single std broadcast in 'single' mode).
        """
        out = self.decoder(samples)
        mean = out[..., : self.input_dim]
        return mean, out[..., self.input_dim :].expand_as(mean)

    # -- sampling ---------------------------------------------------------------------------------------
    def get_reparameterized_samples(
        self, mean: torch.Tensor, log_std: torch.Tensor, n_samples: int = 1
    ) -> torch.Tensor:
        r"""Reparameterised samples :math:`z_s = \mu + \sigma \odot \epsilon_s`,
        :math:`\epsilon_s \sim \mathcal N(0, I)`.

        Args:
            mean: (..., L); log_std: (..., L) or (..., 1) (used as is: give the :meth:`posterior`
                log-std, which includes the jitter).
            n_samples: S.

        Returns:
            (..., S, L).
        """
        mean_s = _with_sample_axis(mean, n_samples)
        eps = torch.randn_like(mean_s)
        return mean_s + eps * torch.exp(log_std).unsqueeze(-2)

    def get_posterior_samples(
        self, X: torch.Tensor, n_samples: int = 1, return_mean_logstd: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Samples of :math:`q(z \mid x)` (always random, whatever the mode).

        Args:
            X: (batch, *input_shape) (for the MIL version (B, N, *input_shape)).
            n_samples: S.
            return_mean_logstd: also return the posterior mean and log-std.

        Returns:
            samples (batch, S, L); with ``return_mean_logstd`` also mean (batch, L) and log_std (batch, L).
        """
        mean, log_std = self.posterior(X)
        samples = self.get_reparameterized_samples(mean, log_std, n_samples)
        if return_mean_logstd:
            return samples, mean, log_std
        return samples

    def latent_samples(self, X: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        """What ``forward`` returns, with one fixed return type (for callers compiled by TorchScript).

        Args:
            X: (batch, *input_shape) (for the MIL version (B, N, *input_shape)).
            n_samples: S.

        Returns:
            (batch, S, L): posterior samples in training mode, the posterior mean repeated S times in eval
            mode.
        """
        if self.training:
            mean, log_std = self.posterior(X)
            return self.get_reparameterized_samples(mean, log_std, n_samples)
        # eval needs only the mean: no random op, nothing of the log-std in an exported graph
        mean, _ = self.get_raw_output_enc(X)
        return _with_sample_axis(mean, n_samples)

    def forward(
        self, X: torch.Tensor, n_samples: int = 1, return_mean_logstd: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode: latent samples in training mode, the posterior mean (repeated S times) in eval mode.

        Args:
            X: (batch, *input_shape) (for the MIL version (B, N, *input_shape)).
            n_samples: S.
            return_mean_logstd: also return the posterior mean and log-std.

        Returns:
            (batch, S, L); with ``return_mean_logstd`` also mean (batch, L) and log_std (batch, L).
        """
        if return_mean_logstd:
            mean, log_std = self.posterior(X)
            if self.training:
                return self.get_reparameterized_samples(mean, log_std, n_samples), mean, log_std
            return _with_sample_axis(mean, n_samples), mean, log_std
        return self.latent_samples(X, n_samples)

    def complete_forward_samples(self, X: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        """Reconstruction: the likelihood mean decoded from the latents of ``forward``, averaged over samples.

        Args:
            X: (batch, *input_shape) (for the MIL version (B, N, *input_shape)).
            n_samples: S.

        Returns:
            Same shape as X.
        """
        rec, _ = self.get_raw_output_dec(self.latent_samples(X, n_samples))
        return rec.mean(dim=-2).reshape(X.shape)

    # -- losses -----------------------------------------------------------------------------------------
    def _instance_losses(
        self, X: torch.Tensor, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-instance -E_q[log p(x|z)] (Monte Carlo over S samples) and KL: (*lead,), (*lead,), and the
        samples (*lead, S, L)."""
        x = self._flatten(X)
        samples, mean, log_std = self.get_posterior_samples(X, n_samples, return_mean_logstd=True)
        lik_mean, lik_log_std = self.get_raw_output_dec(samples)
        ell = _diagonal_gaussian_log_pdf(x.unsqueeze(-2), lik_mean, lik_log_std).mean(dim=-1)
        return -ell, _kl_to_standard_normal(mean, log_std), samples

    @staticmethod
    def _check_reduction(reduction: str) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")

    def compute_loss(
        self, X: torch.Tensor, reduction: str = "mean", n_samples: int = 1, return_samples: bool = False
    ) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The two ELBO terms to minimise, ``{'VaeELL': -E_q[log p(x|z)], 'VaeKL': KL(q(z|x) || N(0, I))}``.

        Args:
            X: (batch, *input_shape).
            reduction: 'mean' or 'sum' over instances, or 'none' (per instance, (batch,)).
            n_samples: Monte Carlo samples S for the expected log-likelihood.
            return_samples: also return the latent samples used.

        Returns:
            The loss dict; with ``return_samples`` also the samples (batch, S, L).
        """
        self._check_reduction(reduction)
        nll, kl, samples = self._instance_losses(X, n_samples)
        if reduction == "mean":
            nll, kl = nll.mean(), kl.mean()
        elif reduction == "sum":
            nll, kl = nll.sum(), kl.sum()
        losses = {"VaeELL": nll, "VaeKL": kl}
        if return_samples:
            return losses, samples
        return losses

    def _log_marginal(self, X: torch.Tensor, n_samples: int) -> torch.Tensor:
        x = self._flatten(X)
        samples, mean, log_std = self.get_posterior_samples(X, n_samples, return_mean_logstd=True)
        lik_mean, lik_log_std = self.get_raw_output_dec(samples)
        log_lik = _diagonal_gaussian_log_pdf(x.unsqueeze(-2), lik_mean, lik_log_std)
        log_prior = _diagonal_gaussian_log_pdf(samples, torch.zeros_like(samples), torch.zeros_like(samples))
        log_q = _diagonal_gaussian_log_pdf(samples, mean.unsqueeze(-2), log_std.unsqueeze(-2))
        return torch.logsumexp(log_lik + log_prior - log_q, dim=-1) - math.log(n_samples)

    def log_marginal_likelihood_importance_sampling(
        self, X: torch.Tensor, n_samples: int = 1
    ) -> torch.Tensor:
        r"""Importance-sampling estimate of :math:`\log p(x)` with the posterior as proposal:

        .. math:: \log p(x) \approx \log \frac1S \sum_{s=1}^S \frac{p(x \mid z_s)\, p(z_s)}{q(z_s \mid x)},
                  \qquad z_s \sim q(z \mid x).

        Args:
            X: (batch, *input_shape).
            n_samples: S importance samples.

        Returns:
            (batch,) estimates (a lower bound in expectation; tighter as S grows).
        """
        return self._log_marginal(X, n_samples)

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, layer_sizes={self.layer_sizes}, "
            f"activations={self.activations}, covar_mode={self.covar_mode!r}, jitter={self.jitter}"
        )


class VariationalAutoEncoderMIL(VariationalAutoEncoder):
    r"""The same VAE applied to every instance of a batch of bags: X (B, N, \*input_shape) -> (B, N, S, L).

    Every method takes bags; ``compute_loss`` and ``log_marginal_likelihood_importance_sampling`` also take a
    mask (B, N), bool or uint8, True / 1 = real instance: padded instances contribute nothing (their losses
    and log-likelihoods are 0, the 'mean' is over the real instances of the whole batch).

    Args: as :class:`VariationalAutoEncoder`.
    """

    batch_dims: int = 2

    def compute_loss(  # type: ignore[override]
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
        n_samples: int = 1,
        return_samples: bool = False,
    ) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The ELBO terms of the real instances, ``{'VaeELL': ..., 'VaeKL': ...}``.

        Args:
            X: (B, N, *input_shape).
            mask: (B, N) True / 1 = real instance; None = all real.
            reduction: 'mean' over the real instances of the batch, 'sum' over them, or 'none' ((B, N), 0 on
                padding).
            n_samples: Monte Carlo samples S.
            return_samples: also return the latent samples used.

        Returns:
            The loss dict; with ``return_samples`` also the samples (B, N, S, L).
        """
        self._check_reduction(reduction)
        real = as_bool_mask(mask, X)
        nll, kl, samples = self._instance_losses(_zero_padding(X, real), n_samples)
        nll = torch.where(real, nll, torch.zeros_like(nll))
        kl = torch.where(real, kl, torch.zeros_like(kl))
        if reduction != "none":
            nll, kl = nll.sum(), kl.sum()
            if reduction == "mean":
                count = real.sum().clamp_min(1).to(nll.dtype)
                nll, kl = nll / count, kl / count
        losses = {"VaeELL": nll, "VaeKL": kl}
        if return_samples:
            return losses, samples
        return losses

    def log_marginal_likelihood_importance_sampling(  # type: ignore[override]
        self, X: torch.Tensor, mask: torch.Tensor | None = None, n_samples: int = 1
    ) -> torch.Tensor:
        r"""Importance-sampling estimate of :math:`\log p(x)` for every instance (see the base class).

        Args:
            X: (B, N, *input_shape).
            mask: (B, N); None = all real.
            n_samples: S importance samples.

        Returns:
            (B, N), 0 on padding.
        """
        real = as_bool_mask(mask, X)
        log_px = self._log_marginal(_zero_padding(X, real), n_samples)
        return torch.where(real, log_px, torch.zeros_like(log_px))
