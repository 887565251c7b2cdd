"""VAEABMIL: attention MIL on the latent space of a variational autoencoder trained jointly (Fuster et al.,
2025, "Using Variational Autoencoders for Out of Distribution Detection in Histological Multiple Instance
Learning").

Instance encoder (a :class:`~milsdk.nn.VariationalAutoEncoderMIL`) -> attention pooling -> linear classifier;
the VAE's ELBO terms are trained with the bag loss and its importance-sampled log-likelihood scores instances
and bags as in or out of distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from milsdk.errors import ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import register_model
from milsdk.nn.attention import AttentionPool
from milsdk.nn.linear import LazyLinear
from milsdk.nn.variational_autoencoder import VariationalAutoEncoderMIL

__all__ = ["VAEABMIL"]

_VAE_DEFAULTS = {"vae_layer_sizes": (128, 64), "vae_activations": None, "vae_covar_mode": "single"}


@register_model
class VAEABMIL(MILModel):
    r"""Attention-based MIL on VAE latents.

    .. math:: z_i = \frac1S \sum_{s=1}^S z_{i,s},\quad z_{i,s} \sim q(z \mid x_i),\qquad
              f = \operatorname{AttentionPool}(z_1, \dots, z_N),\qquad
              \hat y = W \sum_i \operatorname{softmax}_i(f)\, z_i + b

    Training minimises the bag loss plus the VAE terms ``VaeELL`` (minus the expected log-likelihood) and
    ``VaeKL`` over the real instances (weigh them with the Trainer's loss coefficients).

    Eval mode is deterministic: the latent of each instance is its posterior mean (no sampling), which is also
    what an exported model computes. In training mode ``n_samples`` latent samples are drawn per instance and
    averaged.

    Args:
        feat_ext: the VAE (a :class:`~milsdk.nn.VariationalAutoEncoderMIL`); None = build one from
            ``in_shape`` and the ``vae_*`` options (the only way a checkpoint can rebuild the model: a module
            is not data).
        in_shape: shape of one instance, e.g. (1024,); required when ``feat_ext`` is None, else None = lazy.
        att_dim: attention hidden size.
        att_act: 'tanh', 'relu' or 'gelu'.
        gated: gated attention.
        criterion: bag loss (default BCEWithLogitsLoss for one output, CrossEntropyLoss for n_classes > 1).
        vae_loss_reduction: 'mean' or 'sum' of the VAE terms over the real instances of the batch, or 'none'
            ((B, N) terms, for custom training loops).
        vae_layer_sizes: encoder layer sizes of the VAE built when ``feat_ext`` is None (the last is the
            latent size).
        vae_activations: one activation name per VAE layer (None = ReLU on hidden layers, none on the latent).
        vae_covar_mode: 'single' or 'diagonal' covariance of the VAE built when ``feat_ext`` is None.
        n_classes: number of outputs (1 = binary, logits (B,); C > 1 = logits (B, C)).
    """

    test_config = {"att_dim": 8, "vae_layer_sizes": (8, 4)}

    def __init__(
        self,
        feat_ext: VariationalAutoEncoderMIL | None = None,
        in_shape: Sequence[int] | None = None,
        att_dim: int = 128,
        att_act: str = "tanh",
        gated: bool = False,
        criterion: torch.nn.Module | None = None,
        vae_loss_reduction: str = "mean",
        vae_layer_sizes: Sequence[int] = (128, 64),
        vae_activations: Sequence[str | None] | None = None,
        vae_covar_mode: str = "single",
        n_classes: int = 1,
    ) -> None:
        super().__init__()
        if vae_loss_reduction not in ("mean", "sum", "none"):
            raise ModelConfigError(
                f"VAEABMIL: vae_loss_reduction must be 'mean', 'sum' or 'none', got {vae_loss_reduction!r}"
            )
        vae_options = {
            "vae_layer_sizes": tuple(vae_layer_sizes),
            "vae_activations": None if vae_activations is None else tuple(vae_activations),
            "vae_covar_mode": vae_covar_mode,
        }
        if feat_ext is None:
            if in_shape is None:
                raise ModelConfigError(
                    "VAEABMIL: give in_shape (the VAE is built from it) or a VariationalAutoEncoderMIL "
                    "feat_ext"
                )
            try:
                feat_ext = VariationalAutoEncoderMIL(
                    input_shape=tuple(in_shape),
                    layer_sizes=vae_layer_sizes,
                    activations=vae_activations,
                    covar_mode=vae_covar_mode,
                )
            except ValueError as exc:
                raise ModelConfigError(f"VAEABMIL: {exc}") from exc
        else:
            if not isinstance(feat_ext, VariationalAutoEncoderMIL):
                raise ModelConfigError(
                    f"VAEABMIL: feat_ext must be a VariationalAutoEncoderMIL, got {type(feat_ext).__name__}"
                )
            if in_shape is not None and tuple(in_shape) != feat_ext.input_shape:
                raise ModelConfigError(
                    f"VAEABMIL: in_shape {tuple(in_shape)} differs from the feat_ext input_shape "
                    f"{feat_ext.input_shape}"
                )
            changed = sorted(k for k, v in vae_options.items() if v != _VAE_DEFAULTS[k])
            if changed:
                raise ModelConfigError(
                    f"VAEABMIL: {', '.join(changed)} only configure the VAE built when feat_ext is None; "
                    "set them on the VariationalAutoEncoderMIL you pass instead"
                )
        feat_dim = self.setup_head(feat_ext, in_shape, criterion, n_classes)
        self.vae_loss_reduction = vae_loss_reduction
        self.pool = AttentionPool(in_dim=feat_dim, att_dim=att_dim, act=att_act, gated=gated)
        self.classifier = LazyLinear(feat_dim, n_classes)

    def forward(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        n_samples: int = 1,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            mask: (B, N) True / 1 = real instance; None = all real.
            return_att: also return the attention logits.
            n_samples: latent samples per instance, averaged (training mode; eval uses the posterior mean).

        Returns:
            logits (B,) for one output or (B, C); with ``return_att`` also f (B, N), attention logits before
            the masked softmax (as in the reference).
        """
        Z = self.feat_ext.latent_samples(X, n_samples).mean(dim=-2)
        z, f = self.pool.pool_with_logits(Z, mask)
        logits = self.squeeze_binary(self.classifier(z))
        if return_att:
            return logits, f
        return logits

    def compute_loss(
        self, Y: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None, n_samples: int = 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass, bag loss and the VAE terms of the real instances.

        Args:
            Y: (B,) bag labels.
            X: (B, N, *in_shape); mask: (B, N).
            n_samples: latent samples per instance, for the logits and the Monte Carlo expected
                log-likelihood.

        Returns:
            logits (B,) or (B, C); losses ``{criterion name, 'VaeELL', 'VaeKL'}``.
        """
        logits = self(X, mask, n_samples=n_samples)
        vae_losses = self.feat_ext.compute_loss(
            X, mask, reduction=self.vae_loss_reduction, n_samples=n_samples
        )
        return logits, {**self.bag_loss(logits, Y), **vae_losses}

    def log_marginal_likelihood_importance_sampling(
        self, X: torch.Tensor, mask: torch.Tensor | None = None, n_samples: int = 1
    ) -> torch.Tensor:
        r"""Importance-sampling estimate of :math:`\log p(x_i)` under the VAE for every instance (an
        out-of-distribution score: low = unlike the training instances).

        Args:
            X: (B, N, *in_shape); mask: (B, N).
            n_samples: importance samples.

        Returns:
            (B, N), 0 on padding.
        """
        return self.feat_ext.log_marginal_likelihood_importance_sampling(X, mask, n_samples=n_samples)
