"""iRPE machinery: bucket ids against a plain re-computation of the paper's formulas, configs, encodings."""

from __future__ import annotations

import math

import pytest
import torch

from milsdk.nn.irpe import (
    METHOD,
    build_rpe,
    get_rpe_config,
    grid_positions,
    iRPE,
    iRPE_Cross,
    piecewise_index,
)


def _g(x: float, alpha: float, beta: float, gamma: float) -> int:
    """The piecewise index function, one scalar at a time (paper Eq. 18, float32 like the reference)."""
    x32 = float(torch.tensor(x, dtype=torch.float32))
    if abs(x32) <= alpha:
        return int(round(x32))
    y = alpha + math.log(abs(x32) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    return int(math.copysign(min(round(y), beta), x32))


def test_piecewise_index_matches_the_formula():
    alpha, beta, gamma = 1.9, 3.8, 15.2
    values = torch.arange(-40, 41)
    got = piecewise_index(values, alpha, beta, gamma)
    assert got.tolist() == [_g(float(v), alpha, beta, gamma) for v in values.tolist()]
    assert got.min() == -3 and got.max() == 3


@pytest.mark.parametrize("method", ["product", "euc", "quant", "cross"])
def test_bucket_ids_follow_the_method_for_arbitrary_offsets(method):
    cfg = get_rpe_config(ratio=1.9, method=method, skip=1, rpe_on="k")["rpe_k"]
    rpe_k = build_rpe({"rpe_q": None, "rpe_k": cfg, "rpe_v": None}, head_dim=4, num_heads=2)[1]
    a, b, g = cfg["alpha"], cfg["beta"], cfg["gamma"]
    torch.manual_seed(0)
    pos = torch.randint(0, 30, (1, 6, 2))
    skip = torch.tensor([True, False, False, False, False, False])
    parts = [rpe_k.rp_rows, rpe_k.rp_cols] if method == "cross" else [rpe_k]
    for part in parts:
        ids = part.bucket_ids(pos, pos, skip, skip)[0]
        for i in range(6):
            for j in range(6):
                if i == 0 or j == 0:
                    want = part.skip_bucket
                else:
                    dr, dc = (pos[0, i] - pos[0, j]).tolist()
                    if method == "product":
                        want = (_g(dr, a, b, g) + 3) * 7 + _g(dc, a, b, g) + 3
                    elif method == "euc":
                        want = _g(round(math.sqrt(dr * dr + dc * dc)), a, b, g) + 3
                    elif method == "quant":
                        want = _g(dr * dr + dc * dc, a, b, g) + 3
                    elif part.method == METHOD.CROSS_ROWS:
                        want = _g(dr, a, b, g) + 3
                    else:
                        want = _g(dc, a, b, g) + 3
                assert ids[i, j].item() == want, (i, j)
    assert int(cfg["num_buckets"]) == (50 if method == "product" else 8)


def test_contextual_encoding_on_keys_and_values_by_hand():
    cfg = get_rpe_config(method="product", mode="contextual", skip=0, rpe_on="kv")
    _, rpe_k, rpe_v = build_rpe(cfg, head_dim=2, num_heads=1)
    torch.manual_seed(1)
    with torch.no_grad():
        rpe_k.lookup_table_weight.normal_()
        rpe_v.lookup_table_weight.normal_()
    x = torch.randn(1, 1, 4, 2)  # 4 tokens on a 2 x 2 grid
    enc = rpe_k(x, height=2, width=2)
    pos = grid_positions(torch.ones(1, 4, dtype=torch.bool), 0, 2, 2)[0]
    ids = rpe_k.bucket_ids(pos[None], pos[None], torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))[0]
    W = rpe_k.lookup_table_weight[0]  # (head_dim, K)
    want = torch.stack([torch.stack([x[0, 0, i] @ W[:, ids[i, j]] for j in range(4)]) for i in range(4)])
    torch.testing.assert_close(enc[0, 0], want)
    att = torch.softmax(torch.randn(1, 1, 4, 4), dim=-1)
    Wv = rpe_v.lookup_table_weight[0]  # (K, head_dim)
    want_v = torch.stack([sum(att[0, 0, i, j] * Wv[ids[i, j]] for j in range(4)) for i in range(4)])
    torch.testing.assert_close(rpe_v(att, height=2, width=2)[0, 0], want_v)


def test_bias_mode_and_translation_invariance_of_coords():
    cfg = get_rpe_config(method="euc", mode="bias", shared_head=False, skip=1)
    rpe = build_rpe(cfg, head_dim=4, num_heads=3)[1]
    with torch.no_grad():
        rpe.lookup_table_bias.normal_()
    x = torch.randn(2, 3, 6, 4)
    coords = torch.randint(0, 50, (2, 5, 2))
    a = rpe(x, coords=coords)
    b = rpe(x, coords=coords + 17)
    assert a.shape == (2, 3, 6, 6)
    torch.testing.assert_close(a, b)
    assert torch.equal(a[:, :, 0, 1:], rpe.lookup_table_bias[:, rpe.skip_bucket][None, :, None].expand(2, 3, 5))


def test_bad_options_are_refused_with_their_name():
    with pytest.raises(ValueError, match="method"):
        get_rpe_config(method="polar")
    with pytest.raises(ValueError, match="rpe_on"):
        get_rpe_config(rpe_on="kx")
    with pytest.raises(ValueError, match="contextual"):
        get_rpe_config(mode="bias", rpe_on="v")
    with pytest.raises(ValueError, match="skip"):
        get_rpe_config(skip=2)
    with pytest.raises(ValueError, match="mode"):
        iRPE(head_dim=2, mode="fancy", method=METHOD.PRODUCT)
    with pytest.raises(ValueError, match="CROSS"):
        iRPE_Cross(method=METHOD.PRODUCT, head_dim=2)


def test_grid_positions_are_per_bag_and_ignore_padding():
    keep = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    pos = grid_positions(keep, skip=1)
    # bag 0: 4 spatial tokens -> 2 x 2 grid; bag 1: 7 -> 3 wide
    assert pos[0, 1:5].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert pos[1, 1:8].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0]]
    alone = grid_positions(keep[:1, :5], skip=1)
    assert torch.equal(alone[0], pos[0, :5])
