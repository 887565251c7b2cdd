r"""Layer-wise relevance propagation (LRP) for transformers, torchmil 1.0.2's ``torchmil.nn.relprop``.

Each layer here is the torch layer of the same name that also records its input during the forward pass (a
forward hook) and has ``relprop(R, alpha=0.5)``: given the relevance ``R`` of its output (the output's shape),
it returns the relevance of its input. The rules (Bach et al., PLoS ONE 2015; for transformers Chefer, Gur and
Wolf, CVPR 2021, "Transformer Interpretability Beyond Attention Visualization", whose GraphCAM use in GTP
torchmil follows):

- ``Linear``: the :math:`\alpha\beta` rule (bias excluded), with :math:`\beta = \alpha - 1`,

  .. math::
      R_i = \sum_j \Big(\alpha \frac{(x_i w_{ji})^+}{\sum_k (x_k w_{jk})^+}
            - \beta \frac{(x_i w_{ji})^-}{\sum_k (x_k w_{jk})^-}\Big) R_j

  so that :math:`\sum_i R_i = (\alpha - \beta) \sum_j R_j = \sum_j R_j` (conservation) wherever the
  denominators are non-zero;
- layers computing a function of their input with no weights to split (pools, ``Einsum``, ``IndexSelect``,
  ``Cat``, ``AddEye``): the gradient x input rule, :math:`R_x = x \odot \nabla_x \langle z, R / z\rangle`;
- ``Add``: gradient x input per operand, each rescaled so that the operands share :math:`\sum R` in proportion
  to the absolute value of their relevance sums; ``Clone``: the relevances of the copies are summed;
- element-wise and normalisation layers (``ReLU``, ``GELU``, ``Softmax``, ``LayerNorm``, ``Dropout``,
  ``Identity``): relevance passes through unchanged.

``MultiheadSelfAttention``, ``TransformerLayer`` and ``TransformerEncoder`` are built from these layers (the same
parameter names as torchmil's, so their state_dicts load into each other); their ``relprop(...,
return_att_relevance=True)`` also returns the relevance of each attention map, the input of GraphCAM's rollout.
Difference from torchmil 1.0.2 (listed in ``milsdk.compat.torchmil_differences``): ``TransformerLayer.relprop``
merges the residual and the attention branch's relevance at its input (torchmil passes the residual's twice
and drops the attention branch's, unlike Chefer et al.'s code).

Relevances of ``Add`` are split with sums over the whole tensor, as the reference's: propagate one bag at a time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "safe_divide", "forward_hook", "backward_hook", "RelProp", "RelPropSimple", "AddEye", "ReLU", "GELU",
    "Softmax", "LayerNorm", "Dropout", "MaxPool2d", "AdaptiveAvgPool2d", "AvgPool2d", "Add", "Identity", "Einsum",
    "IndexSelect", "Clone", "Cat", "Sequential", "BatchNorm2d", "Linear", "trunc_normal_",
    "MultiheadSelfAttention", "TransformerLayer", "TransformerEncoder",
]

_EPS = 1e-9


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + 1e-9)``, and 0 wherever ``b == 0`` (never inf or NaN from a zero denominator).

    Args:
        a, b: broadcastable tensors.
    """
    den = b + _EPS
    den = torch.where(den == 0, torch.full_like(den, _EPS), den)  # b == -1e-9 exactly
    return a / den * (b != 0).to(a.dtype)


def forward_hook(self: torch.nn.Module, input: tuple[Any, ...], output: Any) -> None:
    """Forward hook of every relprop layer: keeps its first input as ``self.X`` (detached, requiring grad, so that
    ``relprop`` can differentiate the layer again from it; a list of tensors stays a list) and its output as
    ``self.Y``."""
    first = input[0]
    if isinstance(first, (list, tuple)):
        self.X = [t.detach().requires_grad_(True) for t in first]
    else:
        self.X = first.detach().requires_grad_(True)
    self.Y = output


def backward_hook(self: torch.nn.Module, grad_input: Any, grad_output: Any) -> None:
    """Backward hook: keeps the layer's gradients as ``self.grad_input`` / ``self.grad_output``."""
    self.grad_input = grad_input
    self.grad_output = grad_output


class RelProp(torch.nn.Module):
    """Base of the relprop layers: records the input at each forward; ``relprop`` passes relevance through."""

    def __init__(self) -> None:
        super().__init__()
        self.register_forward_hook(forward_hook)

    def gradprop(self, Z: Any, X: Any, S: Any) -> tuple[torch.Tensor, ...]:
        """Gradient of ``Z`` w.r.t. ``X`` weighted by ``S`` (vector-Jacobian product; the graph is kept)."""
        return torch.autograd.grad(Z, X, S, retain_graph=True)

    def relprop(self, R: Any, alpha: float = 0.5) -> Any:
        """Relevance of the input from the relevance ``R`` of the output (here: unchanged)."""
        return R


def _grad_x_input(X: Any, C: tuple[torch.Tensor, ...]) -> Any:
    """x * gradient, for one input tensor or each of a list of them."""
    if torch.is_tensor(X):
        return X * C[0]
    return [x * c for x, c in zip(X, C)]


class RelPropSimple(RelProp):
    """Relprop layer with the gradient x input rule (for layers whose forward takes the recorded input alone)."""

    def relprop(self, R: torch.Tensor, alpha: float = 0.5) -> Any:
        Z = self.forward(self.X)
        return _grad_x_input(self.X, self.gradprop(Z, self.X, safe_divide(R, Z)))


class AddEye(RelPropSimple):
    """Adds the identity to each (seq_len x seq_len) map of a (B, C, seq_len, seq_len) tensor."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(input.shape[2], dtype=input.dtype, device=input.device)
        return input + eye.expand_as(input)


class ReLU(torch.nn.ReLU, RelProp):
    """ReLU; relevance passes through."""


class GELU(torch.nn.GELU, RelProp):
    """GELU; relevance passes through."""


class Softmax(torch.nn.Softmax, RelProp):
    """Softmax; relevance passes through."""


class LayerNorm(torch.nn.LayerNorm, RelProp):
    """LayerNorm; relevance passes through."""


class Dropout(torch.nn.Dropout, RelProp):
    """Dropout; relevance passes through."""


class MaxPool2d(torch.nn.MaxPool2d, RelPropSimple):
    """MaxPool2d with the gradient x input rule (relevance goes to the maxima)."""


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d, RelPropSimple):
    """AdaptiveAvgPool2d with the gradient x input rule."""


class AvgPool2d(torch.nn.AvgPool2d, RelPropSimple):
    """AvgPool2d with the gradient x input rule."""


class Add(RelPropSimple):
    """Sum of two tensors, ``forward([a, b])``."""

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.add(*inputs)

    def relprop(self, R: torch.Tensor, alpha: float = 0.5) -> list[torch.Tensor]:
        """Gradient x input per operand, rescaled so that operand k gets
        :math:`\\sum R \\cdot |s_k| / (|s_a| + |s_b|)`, :math:`s_k` its relevance sum."""
        a, b = super().relprop(R, alpha)
        total = a.sum().abs() + b.sum().abs()
        out = []
        for part in (a, b):
            share = safe_divide(part.sum().abs(), total) * R.sum()
            out.append(part * safe_divide(share, part.sum()))
        return out


class Identity(torch.nn.Identity, RelProp):
    """Identity; relevance passes through."""


class Einsum(RelPropSimple):
    """``torch.einsum(equation, *operands)`` (called with a list ``[A, B]`` of operands), gradient x input rule.

    Args:
        equation: the einsum equation, e.g. ``"b h i d, b h j d -> b h i j"``.
    """

    def __init__(self, equation: str) -> None:
        super().__init__()
        self.equation = equation

    def forward(self, *operands: Any) -> torch.Tensor:
        return torch.einsum(self.equation, *operands)


class IndexSelect(RelProp):
    """``torch.index_select(inputs, dim, indices)``; relevance goes back to the selected entries."""

    def forward(self, inputs: torch.Tensor, dim: int, indices: torch.Tensor) -> torch.Tensor:
        self.dim, self.indices = dim, indices
        return torch.index_select(inputs, dim, indices)

    def relprop(self, R: torch.Tensor, alpha: float = 0.5) -> Any:
        Z = self.forward(self.X, self.dim, self.indices)
        return _grad_x_input(self.X, self.gradprop(Z, self.X, safe_divide(R, Z)))


class Clone(RelProp):
    """``num`` references to one tensor (a branch point); the relevances of the copies are summed."""

    def forward(self, input: torch.Tensor, num: int) -> list[torch.Tensor]:
        self.num = num
        return [input] * num

    def relprop(self, R: Any, alpha: float = 0.5) -> torch.Tensor:
        """R: one relevance per copy; returns :math:`x \\odot \\sum_k R_k / x`."""
        ratio = sum(safe_divide(r, self.X) for r in R)
        return self.X * ratio


class Cat(RelProp):
    """``torch.cat(inputs, dim)``; each input gets the relevance of its slice."""

    def forward(self, inputs: list[torch.Tensor], dim: int) -> torch.Tensor:
        self.dim = dim
        return torch.cat(inputs, dim)

    def relprop(self, R: torch.Tensor, alpha: float = 0.5) -> list[torch.Tensor]:
        Z = self.forward(self.X, self.dim)
        C = self.gradprop(Z, self.X, safe_divide(R, Z))
        return [x * c for x, c in zip(self.X, C)]


class Sequential(torch.nn.Sequential):
    """Sequential whose relprop runs each layer's relprop, last layer first."""

    def relprop(self, R: Any, alpha: float = 0.5) -> Any:
        for module in reversed(list(self)):
            R = module.relprop(R, alpha)
        return R


class BatchNorm2d(torch.nn.BatchNorm2d, RelProp):
    """BatchNorm2d; relevance is redistributed over the input in proportion to :math:`x\\,\\gamma / s` (the
    reference's scale :math:`s = \\sqrt{\\text{var}^2 + \\epsilon}`), which leaves it unchanged to 1e-9."""

    def relprop(self, R: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
        var = self.running_var.reshape(1, -1, 1, 1)
        scale = self.weight.reshape(1, -1, 1, 1) / (var.pow(2) + self.eps).sqrt()
        weighted = self.X * scale
        return weighted * (R / (weighted + _EPS))


class Linear(torch.nn.Linear, RelProp):
    """Linear with the alpha-beta rule (see the module docstring)."""

    def relprop(self, R: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
        """Args: R (..., out_features). Returns (..., in_features); ``alpha`` weighs the positive
        contributions, ``alpha - 1`` the negative ones."""
        beta = alpha - 1
        w_pos, w_neg = self.weight.clamp(min=0), self.weight.clamp(max=0)
        x_pos, x_neg = self.X.clamp(min=0), self.X.clamp(max=0)

        def share(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
            # Contributions x_pos w1 + x_neg w2 (all of one sign), each input's share of every output's relevance.
            S = safe_divide(R, F.linear(x_pos, w1) + F.linear(x_neg, w2))
            return x_pos * (S @ w1) + x_neg * (S @ w2)

        return (alpha * share(w_pos, w_neg) - beta * share(w_neg, w_pos)).detach()


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place from N(mean, std²) truncated to [a, b] (``torch.nn.init.trunc_normal_``)."""
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


class MultiheadSelfAttention(RelProp):
    r"""Multi-head softmax self-attention built from relprop layers (no mask: relevance maps are per bag).

    .. math:: Y = W_o \operatorname{concat}_h\big(\operatorname{softmax}(Q_h K_h^\top / \sqrt{d}) V_h\big)

    Args:
        in_dim: token size of the input.
        out_dim: output size (None = ``in_dim``); an output projection exists when it differs from ``att_dim``.
        att_dim: total query/key/value size over the heads.
        n_heads: heads (``att_dim // n_heads`` per head).
        dropout: dropout on the attention weights.
        learn_weights: learn the (bias-free) q/k/v projection; if False, the input is split into q, k, v.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, att_dim: int = 512, n_heads: int = 4,
                 dropout: float = 0.0, learn_weights: bool = True) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.att_dim, self.n_heads, self.head_dim = att_dim, n_heads, att_dim // n_heads
        self.learn_weights = learn_weights
        self.qkv_nn: torch.nn.Module = Linear(in_dim, 3 * att_dim, bias=False) if learn_weights else Identity()
        self.out_proj: torch.nn.Module = Linear(att_dim, out_dim) if out_dim != att_dim else Identity()
        self.softmax = Softmax(dim=-1)
        self.dropout = Dropout(dropout)
        self.matmul1 = Einsum("b h i d, b h j d -> b h i j")
        self.matmul2 = Einsum("b h i j, b h j d -> b h i d")
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, h*d) -> (B, h, N, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.n_heads, -1).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        """(B, h, N, d) -> (B, N, h*d)."""
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Args: X (B, N, in_dim). Returns (B, N, out_dim)."""
        B, N = X.shape[0], X.shape[1]
        Q, K, V = self.qkv_nn(X).reshape(B, N, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        S = self.dropout(self.softmax(self.matmul1([Q, K]) * self.scale))  # (B, h, N, N)
        return self.out_proj(self._merge(self.matmul2([S, V])))

    def relprop(self, R: torch.Tensor, return_att_relevance: bool = False, **kwargs: Any) -> Any:
        """Relevance of the input (B, N, in_dim) from that of the output (B, N, out_dim); with
        ``return_att_relevance`` also the attention map's relevance (B, h, N, N)."""
        R = self._heads(self.out_proj.relprop(R, **kwargs))
        R_S, R_V = self.matmul2.relprop(R, **kwargs)
        R_S = self.dropout.relprop(R_S, **kwargs)
        R_Q, R_K = self.matmul1.relprop(self.softmax.relprop(R_S, **kwargs), **kwargs)
        R_QKV = torch.stack([R_Q, R_K, R_V])  # (3, B, h, N, d) -> (B, N, 3*h*d), the qkv layout
        R_QKV = R_QKV.permute(1, 3, 0, 2, 4).reshape(R_Q.shape[0], R_Q.shape[2], -1)
        R_in = self.qkv_nn.relprop(R_QKV, **kwargs)
        return (R_in, R_S) if return_att_relevance else R_in


class TransformerLayer(torch.nn.Module):
    r"""Pre-norm transformer layer of relprop layers.

    .. math::
        Z = P_\text{in} X + \operatorname{Att}(\operatorname{LN}_1 X),\qquad
        Y = P_\text{out}\big(Z + \operatorname{MLP}(\operatorname{LN}_2 Z)\big)

    (MLP: Linear 4x, ReLU, Dropout, Linear, Dropout; only with ``use_mlp``; :math:`P_\text{in}`,
    :math:`P_\text{out}` linear where ``in_dim`` / ``out_dim`` differ from ``att_dim``, else identities).

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (None = ``in_dim``).
        att_dim: width of the attention and MLP.
        n_heads: attention heads.
        use_mlp: MLP sub-block.
        dropout: dropout of the attention weights and the MLP.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, att_dim: int = 512, n_heads: int = 4,
                 use_mlp: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.att_module = MultiheadSelfAttention(in_dim, att_dim, att_dim=att_dim, n_heads=n_heads, dropout=dropout)
        self.in_proj: torch.nn.Module = Linear(in_dim, att_dim) if in_dim != att_dim else Identity()
        self.use_mlp = use_mlp
        if use_mlp:
            self.mlp_module = Sequential(Linear(att_dim, 4 * att_dim), ReLU(), Dropout(dropout),
                                         Linear(4 * att_dim, att_dim), Dropout(dropout))
        self.out_proj: torch.nn.Module = Linear(att_dim, out_dim) if out_dim != att_dim else Identity()
        self.norm1 = LayerNorm(in_dim)
        self.norm2 = LayerNorm(att_dim)
        self.add1, self.add2 = Add(), Add()
        self.clone1, self.clone2 = Clone(), Clone()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Args: X (B, N, in_dim). Returns (B, N, out_dim)."""
        residual, branch = self.clone1(X, 2)
        Y = self.add1([self.in_proj(residual), self.att_module(self.norm1(branch))])
        if self.use_mlp:
            residual, branch = self.clone2(Y, 2)
            Y = self.add2([residual, self.mlp_module(self.norm2(branch))])
        return self.out_proj(Y)

    def relprop(self, R: torch.Tensor, return_att_relevance: bool = False, **kwargs: Any) -> Any:
        """Relevance of the input (B, N, in_dim); with ``return_att_relevance`` also the attention map's."""
        R = self.out_proj.relprop(R, **kwargs)
        if self.use_mlp:
            R_res, R_mlp = self.add2.relprop(R, **kwargs)
            R_mlp = self.norm2.relprop(self.mlp_module.relprop(R_mlp, **kwargs), **kwargs)
            R = self.clone2.relprop((R_res, R_mlp), **kwargs)
        R_res, R_att = self.add1.relprop(R, **kwargs)
        R_res = self.in_proj.relprop(R_res, **kwargs)
        R_att, R_S = self.att_module.relprop(R_att, return_att_relevance=True, **kwargs)
        R_att = self.norm1.relprop(R_att, **kwargs)
        R = self.clone1.relprop((R_res, R_att), **kwargs)  # both branches (torchmil passes R_res twice)
        return (R, R_S) if return_att_relevance else R


class TransformerEncoder(torch.nn.Module):
    r"""Stack of :class:`TransformerLayer` and a final LayerNorm, with relevance propagation.

    Args:
        in_dim: token size of the input.
        out_dim: token size of the output (None = ``in_dim``).
        att_dim: width of every layer.
        n_heads: attention heads.
        n_layers: layers (the first takes ``in_dim``, the last gives ``out_dim``).
        use_mlp: MLP sub-block in each layer.
        dropout: dropout of each layer.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, att_dim: int = 512, n_heads: int = 4,
                 n_layers: int = 4, use_mlp: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.layers = torch.nn.ModuleList(
            TransformerLayer(in_dim if i == 0 else att_dim, out_dim if i == n_layers - 1 else att_dim,
                             att_dim=att_dim, n_heads=n_heads, use_mlp=use_mlp, dropout=dropout)
            for i in range(n_layers)
        )
        self.norm = LayerNorm(out_dim)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Args: X (B, N, in_dim). Returns (B, N, out_dim)."""
        for layer in self.layers:
            X = layer(X)
        return self.norm(X)

    def relprop(self, R: torch.Tensor, return_att_relevance: bool = False, **kwargs: Any) -> Any:
        """Relevance of the input; with ``return_att_relevance`` also the list of the layers' attention-map
        relevances, last layer first."""
        R = self.norm.relprop(R, **kwargs)
        maps = []
        for layer in reversed(self.layers):
            R, R_S = layer.relprop(R, return_att_relevance=True, **kwargs)
            maps.append(R_S)
        return (R, maps) if return_att_relevance else R
