r"""Image relative position encoding (iRPE; Wu, Peng, Chen, Fu, Chao, ICCV 2021, "Rethinking and improving
relative position encoding for vision transformer"), computed from the tokens' 2-D grid coordinates.

A pair of tokens at grid positions :math:`p_i, p_j` gets a bucket :math:`b(i, j)` from their offset
:math:`\delta = p_i - p_j` through the paper's piecewise index function (Eq. 18),

.. math::
    g(x) = \begin{cases} [x] & |x| \le \alpha \\
        \operatorname{sign}(x)\,\min\!\big(\beta,\ [\alpha + \tfrac{\ln(|x|/\alpha)}{\ln(\gamma/\alpha)}
        (\beta - \alpha)]\big) & |x| > \alpha \end{cases}

with :math:`\alpha = r, \beta = 2r, \gamma = 8r` for the ratio :math:`r`, and the method deciding what
:math:`x` is: 'euc' :math:`g(\lVert\delta\rVert)`, 'quant' :math:`g(\lVert\delta\rVert^2)`, 'cross' one
bucket per axis (two encodings summed), 'product' the pair :math:`(g(\delta_r), g(\delta_c))`. A leading
"skip" token (a class token) gets its own bucket with every other token. In 'bias' mode the encoding is a
learned scalar per bucket, :math:`e_{ij} = w_{b(i,j)}`; in 'contextual' mode it depends on the token,
:math:`e_{ij} = x_i^\top w_{b(i,j)}` (on queries or keys), or :math:`\sum_j a_{ij} w_{b(i,j)}` (on values).

Unlike the reference port, which derives positions from the sequence index of an h x w grid (padding the
sequence to a square), positions here are arguments: any token can sit at any integer grid cell, so the
sequence may hold only the occupied cells of a sparse grid (what SETMIL needs to be padding-invariant). The
bucket of an offset is read from a small integer table built once (in float32, as the reference computes it):
the same ids in eager PyTorch, TorchScript and ONNX, with no float rounding at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "METHOD",
    "build_rpe",
    "get_absolute_positions",
    "get_bucket_ids_2d",
    "get_bucket_ids_2d_without_skip",
    "get_num_buckets",
    "get_rpe_config",
    "get_single_rpe_config",
    "grid_positions",
    "iRPE",
    "iRPE_Cross",
    "piecewise_index",
    "quantize_values",
]


class METHOD:
    """Method ids of image relative position encoding (CROSS is computed as CROSS_ROWS + CROSS_COLS)."""

    EUCLIDEAN = 0
    QUANT = 1
    PRODUCT = 3
    CROSS = 4
    CROSS_ROWS = 41
    CROSS_COLS = 42


_METHOD_NAMES = {"euc": METHOD.EUCLIDEAN, "quant": METHOD.QUANT, "cross": METHOD.CROSS, "product": METHOD.PRODUCT}
_MODES = (None, "bias", "contextual")
_SINGLE_METHODS = (METHOD.EUCLIDEAN, METHOD.QUANT, METHOD.PRODUCT, METHOD.CROSS_ROWS, METHOD.CROSS_COLS)


def _method_id(method: int | str) -> int:
    if isinstance(method, str):
        key = method.lower()
        if key not in _METHOD_NAMES:
            raise ValueError(f"iRPE method must be one of {sorted(_METHOD_NAMES)}, got {method!r}")
        return _METHOD_NAMES[key]
    if method not in (*_SINGLE_METHODS, METHOD.CROSS):
        raise ValueError(f"iRPE method id {method!r} does not exist (see METHOD)")
    return int(method)


def piecewise_index(
    relative_position: torch.Tensor, alpha: float, beta: float, gamma: float, dtype: torch.dtype = torch.long
) -> torch.Tensor:
    """The piecewise index function g of the paper (Eq. 18), elementwise.

    Args:
        relative_position: any shape, integer or float offsets (or distances).
        alpha, beta, gamma: its coefficients.
        dtype: integer dtype of the result.

    Returns:
        Same shape, values in [-int(beta), int(beta)].
    """
    rp = relative_position
    rp_float = rp.to(torch.float32)
    rp_abs = rp_float.abs()
    far = (alpha + torch.log(rp_abs.clamp_min(alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)).round()
    far = torch.sign(rp_float) * far.clamp(max=beta)
    near = rp_float.round() if rp.is_floating_point() else rp_float
    return torch.where(rp_abs <= alpha, near, far).to(dtype)


def get_num_buckets(method: int, alpha: float, beta: float, gamma: float) -> int:
    """Number of buckets of one encoding, without the skip token's: (2 int(beta) + 1)^2 for 'product',
    2 int(beta) + 1 otherwise."""
    beta_int = int(beta)
    if method == METHOD.PRODUCT:
        return (2 * beta_int + 1) ** 2
    return 2 * beta_int + 1


def _value_table(method: int, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """g (shifted to [0, 2 int(beta)] for the non-product methods) of every integer input a method feeds it,
    up to where g saturates: index |offset| for product / cross, the squared distance for euc / quant. Inputs
    past the end of the table take its last entry."""
    beta_int = int(beta)
    saturate = int(math.ceil(gamma)) + 1  # g(x) = int(beta) for every x >= gamma
    if method in (METHOD.PRODUCT, METHOD.CROSS_ROWS, METHOD.CROSS_COLS):
        values = torch.arange(saturate + 1)
        table = piecewise_index(values, alpha, beta, gamma)
    elif method == METHOD.EUCLIDEAN:
        squared = torch.arange((saturate + 1) ** 2 + 1)
        distance = squared.to(torch.float32).sqrt().round()
        table = piecewise_index(distance, alpha, beta, gamma)
    elif method == METHOD.QUANT:
        table = piecewise_index(torch.arange(saturate + 1), alpha, beta, gamma)
    else:
        raise ValueError(f"iRPE method id {method!r} has no single bucket table (CROSS is two encodings)")
    if method != METHOD.PRODUCT:
        table = table + beta_int
    return table.to(torch.long)


def grid_positions(
    keep: torch.Tensor, skip: int, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """Row-major grid positions of each bag's real tokens after the first ``skip`` (the reference's layout:
    the k-th real token of a bag sits at (k // w, k % w)).

    Args:
        keep: (B, L) bool, True = real token.
        skip: number of leading non-spatial tokens (their position is (0, 0) and unused).
        height, width: grid size; by default each bag's own square, w = ceil(sqrt(n_b)) for its n_b real
            spatial tokens (so positions never depend on padding); with only ``height``, w = ceil(n_b / height).

    Returns:
        (B, L, 2) long positions (row, col).
    """
    B, L = keep.shape[0], keep.shape[1]
    spatial = keep.clone()
    spatial[:, :skip] = False
    real = spatial.to(torch.long)
    n = real.sum(dim=1, keepdim=True)
    rank = (real.cumsum(dim=1) - 1).clamp_min(0)
    if width is not None:
        w = torch.full_like(n, width)
    elif height is not None:
        w = torch.div(n + height - 1, height, rounding_mode="floor")
    else:
        w = torch.sqrt(n.to(torch.float32)).ceil().to(torch.long)
        w = w - ((w > 0) & ((w - 1) * (w - 1) >= n)).to(torch.long)
        w = w + (w * w < n).to(torch.long)
    w = w.clamp_min(1)
    rows = torch.div(rank, w, rounding_mode="floor")
    cols = rank - rows * w
    pos = torch.stack([rows, cols], dim=-1)
    return pos * spatial.unsqueeze(-1).to(torch.long)


class iRPE(torch.nn.Module):
    r"""One image relative position encoding (every method but 'cross', see :class:`iRPE_Cross`).

    ``transposed=True`` (on queries or keys) gives :math:`e_{ij} = x_i^\top w_{b(i,j)}` ('contextual') or
    :math:`w_{b(i,j)}` ('bias'), shape (B, H, Lq, Lk); ``transposed=False`` (on values, 'contextual' only)
    gives :math:`\sum_j a_{ij} w_{b(i,j)}`, shape (B, H, Lq, head_dim). ``mode=None`` has no parameters and
    encodes nothing (zeros).

    Args:
        head_dim: size of one head.
        num_heads: heads with their own table (1 = shared by every head).
        mode: None, 'bias' or 'contextual'.
        method: a :class:`METHOD` id other than CROSS.
        transposed: True on queries / keys, False on values.
        num_buckets: buckets including the skip token's (default from ``rpe_config``).
        initializer: in-place initialiser of the table (default: zeros, as in the paper's code).
        rpe_config: dict with ``alpha``, ``beta``, ``gamma`` (from :func:`get_single_rpe_config`; default ratio
            1.9, no skip token).
    """

    def __init__(
        self,
        head_dim: int,
        num_heads: int = 8,
        mode: str | None = None,
        method: int | None = None,
        transposed: bool = True,
        num_buckets: int | None = None,
        initializer: Callable[[torch.Tensor], Any] | None = None,
        rpe_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"iRPE mode must be one of {list(_MODES)}, got {mode!r}")
        if method is None or method not in _SINGLE_METHODS:
            raise ValueError(
                f"iRPE method must be one of {list(_SINGLE_METHODS)} (METHOD ids; CROSS is iRPE_Cross), "
                f"got {method!r}"
            )
        if not transposed and mode == "bias":
            raise ValueError("iRPE on values (transposed=False) needs mode='contextual', got 'bias'")
        if rpe_config is None:
            rpe_config = get_single_rpe_config(method=method, mode=mode)
        alpha, beta, gamma = float(rpe_config["alpha"]), float(rpe_config["beta"]), float(rpe_config["gamma"])
        if not alpha > 0:
            raise ValueError(f"iRPE ratio must be > 0 (alpha={alpha})")
        base = get_num_buckets(method, alpha, beta, gamma)
        num_buckets = int(rpe_config.get("num_buckets", base)) if num_buckets is None else int(num_buckets)
        if num_buckets not in (base, base + 1):
            raise ValueError(f"iRPE: num_buckets must be {base} or {base + 1} (with a skip token), got {num_buckets}")
        self.head_dim, self.num_heads = head_dim, num_heads
        self.mode, self.method, self.transposed = mode, int(method), transposed
        self.num_buckets = num_buckets
        self.skip_bucket = base  # the skip (class) token's bucket id, used only when num_buckets == base + 1
        self.beta_int = int(beta)
        self.rpe_config = dict(rpe_config)
        self.initializer = initializer
        table = _value_table(self.method, alpha, beta, gamma)
        self.table_last = int(table.numel()) - 1
        self.register_buffer("bucket_table", table, persistent=False)
        self.lookup_table_bias: torch.nn.Parameter | None = None
        self.lookup_table_weight: torch.nn.Parameter | None = None
        if mode == "bias":
            self.lookup_table_bias = torch.nn.Parameter(torch.zeros(num_heads, num_buckets))
        elif mode == "contextual":
            shape = (num_heads, head_dim, num_buckets) if transposed else (num_heads, num_buckets, head_dim)
            self.lookup_table_weight = torch.nn.Parameter(torch.zeros(shape))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Zero the table, then apply the initializer (if any)."""
        for p in (self.lookup_table_bias, self.lookup_table_weight):
            if p is not None:
                p.zero_()
                if self.initializer is not None:
                    self.initializer(p)

    def _lookup(self, values: torch.Tensor) -> torch.Tensor:
        return self.bucket_table[values.clamp(min=0, max=self.table_last)]

    def bucket_ids(
        self, pos_q: torch.Tensor, pos_k: torch.Tensor, skip_q: torch.Tensor, skip_k: torch.Tensor
    ) -> torch.Tensor:
        """Bucket of every (query, key) pair.

        Args:
            pos_q: (B, Lq, 2) long grid positions of the queries; pos_k: (B, Lk, 2) of the keys.
            skip_q: (Lq,) bool, True = skip (class) token; skip_k: (Lk,) bool.

        Returns:
            (B, Lq, Lk) long ids in [0, num_buckets).
        """
        diff = pos_q.unsqueeze(2) - pos_k.unsqueeze(1)  # (B, Lq, Lk, 2)
        dr, dc = diff[..., 0], diff[..., 1]
        # literal METHOD ids: TorchScript cannot read class attributes of METHOD
        if self.method == 3:  # PRODUCT
            side = 2 * self.beta_int + 1
            r = torch.sign(dr) * self._lookup(dr.abs()) + self.beta_int
            c = torch.sign(dc) * self._lookup(dc.abs()) + self.beta_int
            ids = r * side + c
        elif self.method == 41:  # CROSS_ROWS
            ids = torch.sign(dr) * (self._lookup(dr.abs()) - self.beta_int) + self.beta_int
        elif self.method == 42:  # CROSS_COLS
            ids = torch.sign(dc) * (self._lookup(dc.abs()) - self.beta_int) + self.beta_int
        else:
            ids = self._lookup(dr * dr + dc * dc)
        if self.num_buckets > self.skip_bucket:
            skip = skip_q.reshape(1, -1, 1) | skip_k.reshape(1, 1, -1)
            ids = torch.where(skip, torch.full_like(ids, self.skip_bucket), ids)
        return ids

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per-token part of a contextual encoding on queries / keys: :math:`x_i^\top w_k` for every bucket k.

        Args:
            x: (B, H, L, head_dim) the tokens on the row side (scaled queries for iRPE on keys).

        Returns:
            (B, H, L, num_buckets) for a transposed contextual encoding; ``x`` itself otherwise (unused).
        """
        if self.transposed and self.lookup_table_weight is not None:
            return x @ self.lookup_table_weight.to(x.dtype).unsqueeze(0)
        return x

    def bias_from(
        self,
        prepared: torch.Tensor,
        pos_r: torch.Tensor,
        pos_c: torch.Tensor,
        skip_r: torch.Tensor,
        skip_c: torch.Tensor,
    ) -> torch.Tensor:
        r"""Encoding :math:`e_{ij}` of a block of (row, column) token pairs, from :meth:`prepare` of the rows.

        Args:
            prepared: (B, H, Lr, num_buckets) from :meth:`prepare` (unused in 'bias' mode).
            pos_r, pos_c, skip_r, skip_c: as in :meth:`bucket_ids`.

        Returns:
            (B, H, Lr, Lc); in 'bias' mode (B, H', Lr, Lc), H' = 1 with a shared table (broadcasts).
        """
        ids = self.bucket_ids(pos_r, pos_c, skip_r, skip_c)
        B, Lr, Lc = ids.shape[0], ids.shape[1], ids.shape[2]
        if self.lookup_table_bias is not None:
            table = self.lookup_table_bias  # (H', K); H' = 1 broadcasts over the heads
            return table[:, ids.reshape(-1)].reshape(table.shape[0], B, Lr, Lc).transpose(0, 1)
        if self.lookup_table_weight is not None:
            H = prepared.shape[1]
            return prepared.gather(3, ids.unsqueeze(1).expand(B, H, Lr, Lc))
        return torch.zeros(B, 1, Lr, Lc, device=ids.device)

    def value_term(
        self,
        att: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        skip_q: torch.Tensor,
        skip_k: torch.Tensor,
    ) -> torch.Tensor:
        r"""Contextual encoding on values, :math:`\sum_j a_{ij} w_{b(i,j)}`.

        Args:
            att: (B, H, Lq, Lk) attention weights.
            pos_q, pos_k, skip_q, skip_k: as in :meth:`bucket_ids`.

        Returns:
            (B, H, Lq, head_dim).
        """
        B, H, Lq, Lk = att.shape[0], att.shape[1], att.shape[2], att.shape[3]
        if self.lookup_table_weight is None:
            return att.new_zeros(B, H, Lq, self.head_dim)
        ids = self.bucket_ids(pos_q, pos_k, skip_q, skip_k)
        # accumulate the weights per bucket, then one (num_buckets x head_dim) product
        per_bucket = att.new_zeros(B, H, Lq, self.num_buckets)
        per_bucket = per_bucket.scatter_add(3, ids.unsqueeze(1).expand(B, H, Lq, Lk), att)
        return per_bucket @ self.lookup_table_weight.to(att.dtype).unsqueeze(0)

    def encode(
        self,
        x: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        skip_q: torch.Tensor,
        skip_k: torch.Tensor,
    ) -> torch.Tensor:
        """The encoding of a block of (query, key) pairs.

        Args:
            x: transposed: (B, H, Lq, head_dim) the row tokens (scaled queries for iRPE on keys); not
                transposed: (B, H, Lq, Lk) attention weights.
            pos_q, pos_k, skip_q, skip_k: as in :meth:`bucket_ids`.

        Returns:
            transposed: (B, H, Lq, Lk); not transposed: (B, H, Lq, head_dim).
        """
        if self.transposed:
            enc = self.bias_from(self.prepare(x), pos_q, pos_k, skip_q, skip_k)
            return enc.expand(x.shape[0], x.shape[1], enc.shape[2], enc.shape[3])
        return self.value_term(x, pos_q, pos_k, skip_q, skip_k)

    def forward(
        self,
        x: torch.Tensor,
        height: int | None = None,
        width: int | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The full encoding of a sequence (its first ``num_buckets - base`` tokens being skip tokens).

        Args:
            x: transposed: (B, H, L, head_dim); not transposed: (B, H, L, L) attention weights.
            height, width: grid of the spatial tokens when ``coords`` is None (see :func:`grid_positions`).
            coords: (B, L - skip, 2) integer grid positions of the spatial tokens (floats are floored).

        Returns:
            transposed: (B, H, L, L); not transposed: (B, H, L, head_dim).
        """
        skip = self.num_buckets - self.skip_bucket
        pos = _sequence_positions(x, skip, height, width, coords)
        is_skip = torch.arange(pos.shape[1], device=x.device) < skip
        return self.encode(x, pos, pos, is_skip, is_skip)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, num_heads={self.num_heads}, mode={self.mode!r}, method={self.method}, "
            f"transposed={self.transposed}, num_buckets={self.num_buckets}"
        )


def _sequence_positions(
    x: torch.Tensor, skip: int, height: int | None, width: int | None, coords: torch.Tensor | None
) -> torch.Tensor:
    """(B, L, 2) positions of a whole sequence for :meth:`iRPE.forward`."""
    B, L = x.shape[0], x.shape[2]
    if coords is None:
        keep = torch.ones(B, L, dtype=torch.bool, device=x.device)
        return grid_positions(keep, skip, height, width)
    coords = torch.floor(coords).to(torch.long) if coords.is_floating_point() else coords.to(torch.long)
    lead = torch.zeros(B, skip, 2, dtype=torch.long, device=x.device)
    return torch.cat([lead, coords.to(x.device)], dim=1)


class iRPE_Cross(torch.nn.Module):
    """The 'cross' method: one encoding over row offsets plus one over column offsets.

    Args:
        method: METHOD.CROSS.
        **kwargs: the other :class:`iRPE` arguments (shared by both directions).
    """

    def __init__(self, method: int = METHOD.CROSS, **kwargs: Any) -> None:
        super().__init__()
        if method != METHOD.CROSS:
            raise ValueError(f"iRPE_Cross needs method METHOD.CROSS ({METHOD.CROSS}), got {method!r}")
        self.rp_rows = iRPE(method=METHOD.CROSS_ROWS, **kwargs)
        self.rp_cols = iRPE(method=METHOD.CROSS_COLS, **kwargs)
        self.num_buckets = self.rp_rows.num_buckets
        self.skip_bucket = self.rp_rows.skip_bucket
        self.transposed = self.rp_rows.transposed
        self.contextual = self.rp_rows.transposed and self.rp_rows.mode == "contextual"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`iRPE.prepare` of both directions, concatenated over the bucket axis (contextual mode)."""
        if self.contextual:
            return torch.cat([self.rp_rows.prepare(x), self.rp_cols.prepare(x)], dim=-1)
        return x

    def bias_from(
        self,
        prepared: torch.Tensor,
        pos_r: torch.Tensor,
        pos_c: torch.Tensor,
        skip_r: torch.Tensor,
        skip_c: torch.Tensor,
    ) -> torch.Tensor:
        """Row plus column encoding (arguments as :meth:`iRPE.bias_from`, ``prepared`` from :meth:`prepare`)."""
        if self.contextual:
            K = self.num_buckets
            rows = self.rp_rows.bias_from(prepared[..., :K], pos_r, pos_c, skip_r, skip_c)
            return rows + self.rp_cols.bias_from(prepared[..., K:], pos_r, pos_c, skip_r, skip_c)
        rows = self.rp_rows.bias_from(prepared, pos_r, pos_c, skip_r, skip_c)
        return rows + self.rp_cols.bias_from(prepared, pos_r, pos_c, skip_r, skip_c)

    def value_term(
        self,
        att: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        skip_q: torch.Tensor,
        skip_k: torch.Tensor,
    ) -> torch.Tensor:
        """Row plus column encoding on values (arguments as :meth:`iRPE.value_term`)."""
        rows = self.rp_rows.value_term(att, pos_q, pos_k, skip_q, skip_k)
        return rows + self.rp_cols.value_term(att, pos_q, pos_k, skip_q, skip_k)

    def encode(
        self,
        x: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        skip_q: torch.Tensor,
        skip_k: torch.Tensor,
    ) -> torch.Tensor:
        """Sum of the row and column encodings (arguments as :meth:`iRPE.encode`)."""
        return self.rp_rows.encode(x, pos_q, pos_k, skip_q, skip_k) + self.rp_cols.encode(
            x, pos_q, pos_k, skip_q, skip_k
        )

    def forward(
        self,
        x: torch.Tensor,
        height: int | None = None,
        width: int | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The full encoding of a sequence (arguments as :meth:`iRPE.forward`)."""
        return self.rp_rows(x, height, width, coords) + self.rp_cols(x, height, width, coords)


def get_single_rpe_config(
    ratio: float = 1.9,
    method: int | str = METHOD.PRODUCT,
    mode: str | None = "contextual",
    shared_head: bool = True,
    skip: int = 0,
) -> dict[str, Any]:
    """Config of one encoding: alpha = ratio, beta = 2 ratio, gamma = 8 ratio, and its bucket count.

    Args:
        ratio: controls the number of buckets (> 0).
        method: METHOD id or name ('euc', 'quant', 'cross', 'product').
        mode: None, 'bias' or 'contextual' ('ctx' is an alias).
        shared_head: one table for every head.
        skip: leading non-spatial tokens (0 or 1); a skip token adds one bucket.
    """
    method = _method_id(method)
    mode = "contextual" if mode == "ctx" else mode
    if mode not in _MODES:
        raise ValueError(f"iRPE mode must be one of {list(_MODES)}, got {mode!r}")
    if skip not in (0, 1):
        raise ValueError(f"iRPE skip must be 0 or 1, got {skip!r}")
    if not ratio > 0:
        raise ValueError(f"iRPE ratio must be > 0, got {ratio!r}")
    alpha, beta, gamma = 1 * ratio, 2 * ratio, 8 * ratio
    single = METHOD.CROSS_ROWS if method == METHOD.CROSS else method
    return {
        "shared_head": shared_head,
        "mode": mode,
        "method": method,
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "num_buckets": get_num_buckets(single, alpha, beta, gamma) + skip,
    }


def get_rpe_config(
    ratio: float = 1.9,
    method: int | str = "product",
    mode: str | None = "contextual",
    shared_head: bool = True,
    skip: int = 0,
    rpe_on: str = "k",
) -> dict[str, dict[str, Any] | None]:
    """Configs of the encodings on queries, keys and values.

    Args:
        ratio, method, mode, shared_head, skip: as :func:`get_single_rpe_config`.
        rpe_on: where to encode: a non-empty combination of 'q', 'k', 'v' ('v' needs mode 'contextual').

    Returns:
        {"rpe_q": config or None, "rpe_k": ..., "rpe_v": ...}.
    """
    if not rpe_on or any(ch not in "qkv" for ch in rpe_on):
        raise ValueError(f"rpe_on must combine 'q', 'k' and 'v' (e.g. 'k', 'qkv'), got {rpe_on!r}")
    mode = "contextual" if mode == "ctx" else mode
    if "v" in rpe_on and mode != "contextual":
        raise ValueError(f"iRPE on values (rpe_on={rpe_on!r}) needs mode 'contextual', got {mode!r}")
    single = get_single_rpe_config(ratio, method, mode, shared_head, skip)
    return {f"rpe_{ch}": (dict(single) if ch in rpe_on else None) for ch in "qkv"}


def build_rpe(
    config: dict[str, dict[str, Any] | None] | None, head_dim: int, num_heads: int
) -> list[torch.nn.Module | None]:
    """The encodings on [queries, keys, values] described by ``config`` (None where not used).

    Args:
        config: from :func:`get_rpe_config`, or None (no encoding).
        head_dim: size of one head.
        num_heads: attention heads (tables are per head unless ``shared_head``).
    """
    if config is None:
        return [None, None, None]
    modules: list[torch.nn.Module | None] = []
    for key, transposed in (("rpe_q", True), ("rpe_k", True), ("rpe_v", False)):
        rpe = config.get(key)
        if rpe is None:
            modules.append(None)
            continue
        kwargs = dict(
            head_dim=head_dim,
            num_heads=1 if rpe["shared_head"] else num_heads,
            mode=rpe["mode"],
            transposed=transposed,
            num_buckets=rpe["num_buckets"],
            rpe_config=rpe,
        )
        if rpe["method"] == METHOD.CROSS:
            modules.append(iRPE_Cross(method=METHOD.CROSS, **kwargs))
        else:
            modules.append(iRPE(method=rpe["method"], **kwargs))
    return modules


# ---- torchmil's bucket helpers for an h x w grid (its public functions; milsdk's iRPE uses _value_table) ------


def get_absolute_positions(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Row-major (row, col) positions of an h x w grid.

    Returns:
        (height, width, 2): entry [r, c] = (r, c), in ``dtype`` on ``device``.
    """
    rows = torch.arange(height, dtype=dtype, device=device).reshape(height, 1).expand(height, width)
    cols = torch.arange(width, dtype=dtype, device=device).reshape(1, width).expand(height, width)
    return torch.stack([rows, cols], 2)


@torch.no_grad()
def quantize_values(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rank of each value among the distinct values (0 = the smallest), and the number of distinct values.

    Args:
        values: any shape, integer or float.

    Returns:
        (same shape, same dtype as ``values``) ranks in [0, count), and count.
    """
    distinct, rank = torch.unique(values, return_inverse=True)
    return rank.to(values.dtype), distinct.numel()


def _offset_buckets(method: int, diff: torch.Tensor, alpha: float, beta: float, gamma: float,
                    dtype: torch.dtype) -> torch.Tensor:
    """Bucket of each 2-D offset (..., 2) for one method (before the non-product methods' +int(beta) shift)."""
    if method == METHOD.EUCLIDEAN:
        return piecewise_index(diff.pow(2).sum(-1).float().sqrt().round(), alpha, beta, gamma, dtype)
    if method == METHOD.QUANT:
        return piecewise_index(diff.square().sum(-1), alpha, beta, gamma, dtype)
    if method == METHOD.PRODUCT:
        beta_int = int(beta)
        rows = piecewise_index(diff[..., 0], alpha, beta, gamma, dtype) + beta_int
        cols = piecewise_index(diff[..., 1], alpha, beta, gamma, dtype) + beta_int
        return rows * (2 * beta_int + 1) + cols
    if method in (METHOD.CROSS_ROWS, METHOD.CROSS_COLS):
        return piecewise_index(diff[..., 0 if method == METHOD.CROSS_ROWS else 1], alpha, beta, gamma, dtype)
    raise NotImplementedError(f"iRPE method id {method!r} has no bucket function (CROSS is CROSS_ROWS + "
                              "CROSS_COLS)")


@torch.no_grad()
def get_bucket_ids_2d_without_skip(
    method: int, height: int, width: int, alpha: float, beta: float, gamma: float,
    dtype: torch.dtype = torch.long, device: torch.device = torch.device("cpu"),
) -> tuple[torch.Tensor, int, int]:
    """Bucket of every token pair of an h x w grid read row by row.

    Args:
        method: a :class:`METHOD` id (not CROSS itself: CROSS_ROWS / CROSS_COLS).
        height, width: the grid; the sequence has L = height * width tokens.
        alpha, beta, gamma: the piecewise index coefficients.
        dtype, device: of the positions and the result.

    Returns:
        bucket ids (L, L) in [0, num_buckets), num_buckets (:func:`get_num_buckets`), L.
    """
    L = height * width
    pos = get_absolute_positions(height, width, dtype, device).reshape(L, 2)
    ids = _offset_buckets(method, pos[:, None] - pos[None], alpha, beta, gamma, dtype)
    if method != METHOD.PRODUCT:
        ids = ids + int(beta)
    return ids, get_num_buckets(method, alpha, beta, gamma), L


@torch.no_grad()
def get_bucket_ids_2d(
    method: int, height: int, width: int, skip: int, alpha: float, beta: float, gamma: float,
    dtype: torch.dtype = torch.long, device: torch.device = torch.device("cpu"),
) -> tuple[torch.Tensor, int]:
    """:func:`get_bucket_ids_2d_without_skip` with ``skip`` (0 or 1) leading class token, whose pairs with every
    token (itself included) get one extra bucket, id num_buckets.

    Returns:
        bucket ids (skip + L, skip + L), num_buckets + skip.
    """
    if skip not in (0, 1):
        raise ValueError(f"get_bucket_ids_2d: skip must be 0 or 1, got {skip}")
    ids, num_buckets, L = get_bucket_ids_2d_without_skip(method, height, width, alpha, beta, gamma, dtype, device)
    if skip:
        ids = torch.nn.functional.pad(ids, (1, 0, 1, 0), value=num_buckets)
    return ids.contiguous(), num_buckets + skip
