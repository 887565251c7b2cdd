"""Probabilistic smooth attention pooling (Castro-Macías et al., 2025, "Probabilistic smooth attention for
deep multiple instance learning in medical imaging"; the deterministic case is Smooth attention, Castro-Macías
et al., 2023, "Smooth Attention for Deep Multiple Instance Learning: Application to CT Intracranial Hemorrhage
Detection")."""

from __future__ import annotations

from typing import Optional

import torch

from milsdk.nn.adjacency import resolve_edges
from milsdk.nn.linear import LazyLinear
from milsdk.nn.masked import as_bool_mask, masked_softmax

__all__ = ["ProbSmoothAttentionPool"]


class ProbSmoothAttentionPool(torch.nn.Module):
    r"""Attention pooling with Gaussian attention logits and a graph smoothness (KL / Dirichlet energy) term.

    An MLP gives the parameters of :math:`q(\mathbf f \mid X) = \mathcal N(\boldsymbol\mu_f,
    \operatorname{diag}\boldsymbol\sigma_f^2)` over the N attention logits; samples of it are softmaxed over
    the real instances and pool X:

    .. math::
        H = \operatorname{GELU}(W_2 \operatorname{GELU}(W_1 x_i)),\quad \mu_i = w_\mu^\top h_i,\quad
        \log\sigma_i^2 = w_\sigma^\top h_i,\qquad
        \hat f^{(s)} = \operatorname{clip}_{\pm 20}(\boldsymbol\mu + \boldsymbol\sigma \odot
        \boldsymbol\epsilon^{(s)}),\quad
        z^{(s)} = \sum_i \operatorname{softmax}_{i \in \text{real}}(\hat f^{(s)})_i\, x_i

    With ``covar_mode='zero'`` there is no variance: one "sample", :math:`\hat f = \boldsymbol\mu`.

    The regulariser of bag b (real instances only, :math:`n_b` of them, :math:`A` the bag's adjacency
    restricted to its real instances) is the KL divergence to the smooth prior up to a constant,

    .. math::
        \ell_b = \frac{1}{n_b}\Big(\boldsymbol\mu^\top L \boldsymbol\mu + \operatorname{Tr}(L\Sigma)
        - \tfrac12 \log\det\Sigma\Big), \qquad L = I - A,

    (only :math:`\boldsymbol\mu^\top L \boldsymbol\mu / n_b`, the Dirichlet energy, when
    ``covar_mode='zero'``) averaged over the bags that have a real instance. :math:`L = I - A` is what the
    reference computes (its docstring writes D - A); with the symmetrically normalised adjacency the datasets build (``norm_adj=True``) it
    is the normalised Laplacian.
    It is computed from the edge list: :math:`\boldsymbol\mu^\top A \boldsymbol\mu = \sum_e w_e \mu_{r_e}
    \mu_{c_e}` and :math:`\operatorname{Tr}(A\Sigma) = \sum_{e:\, r_e = c_e} w_e \sigma^2_{r_e}`, so memory is
    O(N + E), never N x N. Deviations from the reference: padded instances contribute nothing (the reference
    sums over them) and each bag is normalised by its own number of real instances (the reference divides by
    the padded N).

    Sampling policy (``n_samples=None``): ``n_samples_train`` random samples in training mode; in eval mode
    the mean, one deterministic "sample" :math:`\hat f = \boldsymbol\mu`, instead of ``n_samples_test``
    random samples, so that evaluation is reproducible and the exported graph has no random number generator.
    Pass ``n_samples`` (e.g. ``n_samples_test``) to draw random samples in eval as well (the predictive
    distribution, for uncertainty maps).

    ``forward`` keeps the reference's call and its variable return tuple (eager only, ``torch.jit.unused``);
    compiled code (TorchScript, ONNX) calls the fixed-type steps :meth:`pool_samples` and
    :meth:`graph_kl_div`.

    Args:
        in_dim: instance size D (None = inferred at the first call).
        att_dim: the MLP is 2 * att_dim wide.
        covar_mode: 'diag' (learned variances) or 'zero' (deterministic attention).
        n_samples_train: samples per bag in training mode.
        n_samples_test: samples a caller draws in eval mode when it asks for the predictive distribution
            (``ProbSmoothABMIL.predict(..., return_samples=True)``).
    """

    __constants__ = ["covar_mode", "n_samples_train", "n_samples_test"]

    def __init__(
        self,
        in_dim: int | None = None,
        att_dim: int = 128,
        covar_mode: str = "diag",
        n_samples_train: int = 1000,
        n_samples_test: int = 5000,
    ) -> None:
        super().__init__()
        if covar_mode not in ("diag", "zero"):
            raise ValueError(
                f"ProbSmoothAttentionPool: covar_mode must be 'diag' or 'zero', got {covar_mode!r}"
            )
        if n_samples_train < 1 or n_samples_test < 1:
            raise ValueError(
                "ProbSmoothAttentionPool: n_samples_train and n_samples_test must be >= 1, got "
                f"{n_samples_train} and {n_samples_test}"
            )
        self.in_dim, self.att_dim, self.covar_mode = in_dim, att_dim, covar_mode
        self.n_samples_train, self.n_samples_test = n_samples_train, n_samples_test
        self.in_mlp = torch.nn.Sequential(
            LazyLinear(in_dim, 2 * att_dim),
            torch.nn.GELU(),
            torch.nn.Linear(2 * att_dim, 2 * att_dim),
            torch.nn.GELU(),
        )
        self.mu_f_nn = torch.nn.Linear(2 * att_dim, 1)
        self.log_diag_Sigma_nn = torch.nn.Linear(2 * att_dim, 1) if covar_mode == "diag" else None

    def attention_distribution(self, X: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Parameters of q(f | X).

        Args:
            X: (B, N, D) instance features.

        Returns:
            mu_f (B, N, 1); log_diag_Sigma_f (B, N, 1), the log variances ('diag'), or None ('zero').
        """
        H = self.in_mlp(X)
        mu_f = self.mu_f_nn(H)
        log_diag_Sigma_f: Optional[torch.Tensor] = None
        if self.log_diag_Sigma_nn is not None:
            log_diag_Sigma_f = self.log_diag_Sigma_nn(H)
        return mu_f, log_diag_Sigma_f

    def sample_attention(
        self, mu_f: torch.Tensor, log_diag_Sigma_f: Optional[torch.Tensor], n_samples: Optional[int] = None
    ) -> torch.Tensor:
        """Attention logit samples under the sampling policy of the class docstring.

        Args:
            mu_f: (B, N, 1) means; log_diag_Sigma_f: (B, N, 1) log variances or None ('zero' mode).
            n_samples: samples to draw; None = ``n_samples_train`` in training, the mean in eval.

        Returns:
            f: (B, N, S) logit samples (S = 1 and f = mu_f for the mean or in 'zero' mode).
        """
        if log_diag_Sigma_f is None:
            return mu_f
        if n_samples is None:
            if not self.training:
                return mu_f
            n_samples = self.n_samples_train
        noise = torch.randn(mu_f.shape[0], mu_f.shape[1], n_samples, dtype=mu_f.dtype, device=mu_f.device)
        return torch.clamp(mu_f + torch.exp(0.5 * log_diag_Sigma_f) * noise, -20.0, 20.0)

    def pool(self, X: torch.Tensor, f: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bag representations of attention logit samples.

        Args:
            X: (B, N, D) instance features; f: (B, N, S) logit samples; mask: (B, N) True / 1 = real.

        Returns:
            z: (B, D, S), one pooled vector per sample.
        """
        s = masked_softmax(f, mask)
        return torch.bmm(X.transpose(1, 2), s.to(X.dtype))

    @torch.jit.export
    def pool_samples(
        self, X: torch.Tensor, mask: Optional[torch.Tensor] = None, n_samples: Optional[int] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Distribution, samples and pooled vectors in one call with a fixed return type (for models).

        Args:
            X: (B, N, D); mask: (B, N); n_samples: as in :meth:`sample_attention`.

        Returns:
            z (B, D, S), f (B, N, S), mu_f (B, N, 1), log_diag_Sigma_f (B, N, 1) or None.
        """
        mu_f, log_diag_Sigma_f = self.attention_distribution(X)
        f = self.sample_attention(mu_f, log_diag_Sigma_f, n_samples)
        return self.pool(X, f, mask), f, mu_f, log_diag_Sigma_f

    @torch.jit.export
    def graph_kl_div(
        self,
        X: torch.Tensor,
        mu_f: torch.Tensor,
        log_diag_Sigma_f: Optional[torch.Tensor],
        mask: Optional[torch.Tensor] = None,
        adj: Optional[torch.Tensor] = None,
        edge_index: Optional[torch.Tensor] = None,
        edge_weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """:meth:`kl_div` from either graph form (dense / sparse adj or edge list; neither = no edges).

        Args:
            X: (B, N, D) (device and node count); mu_f, log_diag_Sigma_f: from :meth:`attention_distribution`;
            mask: (B, N); adj: (B, N, N) or None; edge_index: (B, 2, E) or None; edge_weight: (B, E) or None.

        Returns:
            Scalar.
        """
        if adj is not None or edge_index is not None:
            edge_index, edge_weight = resolve_edges(X, adj, edge_index, edge_weight, mask)
        return self.kl_div(mu_f, log_diag_Sigma_f, mask, edge_index, edge_weight)

    def kl_div(
        self,
        mu_f: torch.Tensor,
        log_diag_Sigma_f: Optional[torch.Tensor],
        mask: Optional[torch.Tensor] = None,
        edge_index: Optional[torch.Tensor] = None,
        edge_weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The KL / Dirichlet-energy term of the class docstring, from the resolved edge list.

        Args:
            mu_f: (B, N, 1); log_diag_Sigma_f: (B, N, 1) or None.
            mask: (B, N) True / 1 = real instance; None = all real.
            edge_index: (B, 2, E) int64 (None = a graph without edges) and edge_weight: (B, E) (None = 1);
                edges touching a padded instance change nothing (its mean and variance are taken as 0).

        Returns:
            Scalar (float32 at least): the mean over the bags with a real instance (0 when there is none).
        """
        work_dtype = torch.promote_types(mu_f.dtype, torch.float32)
        keep = as_bool_mask(mask, mu_f)
        keep_f = keep.to(work_dtype)
        # masked_fill (not a product): garbage at padded positions must not turn into inf * 0 = NaN
        mu = mu_f.squeeze(-1).to(work_dtype).masked_fill(~keep, 0.0)
        energy = (mu * mu).sum(1)
        self_weight = torch.zeros_like(mu)
        if edge_index is not None:
            rows, cols = edge_index[:, 0], edge_index[:, 1]
            if edge_weight is None:
                weight = torch.ones(rows.shape, dtype=work_dtype, device=mu.device)
            else:
                weight = edge_weight.to(work_dtype)
            energy = energy - (weight * mu.gather(1, rows) * mu.gather(1, cols)).sum(1)
            self_weight = self_weight.scatter_add(1, rows, weight * (rows == cols).to(work_dtype))
        if log_diag_Sigma_f is not None:
            log_var = log_diag_Sigma_f.squeeze(-1).to(work_dtype).masked_fill(~keep, 0.0)
            var = torch.exp(log_var) * keep_f
            energy = energy + (var * (1.0 - self_weight)).sum(1) - 0.5 * log_var.sum(1)
        n_real = keep_f.sum(1)
        has_real = (n_real > 0).to(work_dtype)
        per_bag = energy / n_real.clamp_min(1.0) * has_real
        return per_bag.sum() / has_real.sum().clamp_min(1.0)

    @torch.jit.unused
    def forward(
        self,
        X: torch.Tensor,
        adj: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        return_att_samples: bool = False,
        return_att_dist: bool = False,
        return_kl_div: bool = False,
        n_samples: Optional[int] = None,
        edge_index: Optional[torch.Tensor] = None,
        edge_weight: Optional[torch.Tensor] = None,
    ):
        """Pool each bag once per attention sample (the reference's signature and return order).

        Args:
            X: (B, N, D) instance features.
            adj: (B, N, N) dense or sparse adjacency, used only for ``return_kl_div`` (or give the edge list).
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att_samples: also return the logit samples f.
            return_att_dist: also return (mu_f, log_diag_Sigma_f).
            return_kl_div: also return the KL / Dirichlet-energy term (needs adj or edge_index; without either
                the graph has no edges).
            n_samples: samples to draw; None = ``n_samples_train`` in training, the mean in eval.
            edge_index: (B, 2, E) int64 edge list (instead of adj); edge_weight: (B, E) its weights
                (None = 1).

        Returns:
            z (B, D, S), then in this order when asked: f (B, N, S); mu_f (B, N, 1) and log_diag_Sigma_f
            (B, N, 1) (None in 'zero' mode); kl_div (scalar).
        """
        if adj is not None and adj.dim() != 3:
            raise ValueError(
                f"ProbSmoothAttentionPool: adj must be (B, N, N), got shape {tuple(adj.shape)} "
                "(a mask passed positionally? the order is X, adj, mask: pass mask=... by keyword)"
            )
        z, f, mu_f, log_diag_Sigma_f = self.pool_samples(X, mask, n_samples)
        out = [z]
        if return_att_samples:
            out.append(f)
        if return_att_dist:
            out.extend([mu_f, log_diag_Sigma_f])
        if return_kl_div:
            out.append(self.graph_kl_div(X, mu_f, log_diag_Sigma_f, mask, adj, edge_index, edge_weight))
        return out[0] if len(out) == 1 else tuple(out)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, att_dim={self.att_dim}, covar_mode={self.covar_mode!r}, "
            f"n_samples_train={self.n_samples_train}, n_samples_test={self.n_samples_test}"
        )
