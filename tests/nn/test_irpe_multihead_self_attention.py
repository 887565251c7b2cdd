"""iRPE self-attention: shapes, masking, padding, chunking and a plain reference computation."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.attention import iRPEMultiheadSelfAttention
from milsdk.nn.attention.irpe_multihead_self_attention import coords_to_positions


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module.eval()


def _plain(att: iRPEMultiheadSelfAttention, x, keep, pos):
    """Dense reference: q k^T / sqrt(d) + q . r_k[b(i,j)] / sqrt(d) + k . r_q[b(j,i)] / sqrt(d), masked softmax,
    then a v + sum_j a_ij r_v[b(i,j)]."""
    B, L, _ = x.shape
    H, d = att.n_heads, att.head_dim
    q, k, v = att.qkv_nn(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, L, H, d).transpose(1, 2) for t in (q, k, v))
    skip = torch.arange(L) < att.rpe_skip
    s = q @ k.transpose(-1, -2) / d**0.5
    if att.rpe_k is not None:
        ids = att.rpe_k.bucket_ids(pos, pos, skip, skip)
        W = att.rpe_k.lookup_table_weight  # (H', d, K)
        s = s + torch.einsum("bhid,hdbij->bhij", q / d**0.5, W[:, :, ids].permute(0, 1, 2, 3, 4))
    if att.rpe_q is not None:
        ids = att.rpe_q.bucket_ids(pos, pos, skip, skip)  # [j, i] used transposed
        W = att.rpe_q.lookup_table_weight
        s = s + torch.einsum("bhjd,hdbji->bhij", k / d**0.5, W[:, :, ids])
    s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
    a = torch.softmax(s, dim=-1)
    out = a @ v
    if att.rpe_v is not None:
        ids = att.rpe_v.bucket_ids(pos, pos, skip, skip)
        Wv = att.rpe_v.lookup_table_weight  # (H', K, d)
        out = out + torch.einsum("bhij,hbijd->bhid", a, Wv[:, ids])
    return att.out_proj(out.transpose(1, 2).reshape(B, L, H * d)), a


@pytest.mark.parametrize("rpe_on", ["k", "qkv"])
def test_matches_a_plain_dense_computation(rpe_on):
    att = _randomised(iRPEMultiheadSelfAttention(6, 5, att_dim=8, n_heads=2, rpe_on=rpe_on, rpe_shared_head=False))
    x = torch.randn(2, 9, 6)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    coords = torch.randint(0, 12, (2, 8, 2)).float() + 0.3
    pos = coords_to_positions(coords, 1)
    y, a = att(x, keep, return_att=True, coords=coords)
    want_y, want_a = _plain(att, x, keep, pos)
    torch.testing.assert_close(y[keep], want_y[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[0], want_a[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a[1, :, :6], want_a[1, :, :6], atol=1e-6, rtol=1e-5)


def test_padding_never_changes_real_outputs_and_masked_maps_are_finite():
    att = _randomised(iRPEMultiheadSelfAttention(4, att_dim=8, n_heads=2, rpe_method="euc", rpe_on="qk"))
    x = torch.randn(1, 6, 4)
    coords = torch.randint(0, 9, (1, 5, 2))
    y_alone, a_alone = att(x, return_att=True, coords=coords)
    xp = torch.cat([x, 100 * torch.randn(1, 4, 4)], dim=1)
    cp = torch.cat([coords, torch.randint(0, 99, (1, 4, 2))], dim=1)
    for mask in (torch.tensor([[1] * 6 + [0] * 4], dtype=torch.uint8), torch.tensor([[True] * 6 + [False] * 4])):
        y, a = att(xp, mask, return_att=True, coords=cp)
        torch.testing.assert_close(y[:, :6], y_alone, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a[:, :, :6, :6], a_alone, atol=1e-6, rtol=1e-5)
        assert torch.isfinite(a).all() and (a[:, :, :, 6:] == 0).all()
    y, a = att(x, torch.zeros(1, 6, dtype=torch.bool), return_att=True, coords=coords)
    assert torch.isfinite(y).all() and (a == 0).all()


def test_chunked_rows_equal_one_block_and_cls_row_is_returned():
    att = _randomised(iRPEMultiheadSelfAttention(4, att_dim=8, n_heads=2, rpe_on="qkv"))
    att.chunk_rows = 3  # several chunks on a short sequence
    x = torch.randn(2, 11, 4)
    keep = torch.ones(2, 11, dtype=torch.bool)
    keep[0, 8:] = False
    pos = coords_to_positions(torch.randint(0, 6, (2, 10, 2)), 1)
    y_chunked, cls_row = att.forward_pos(x, keep, pos)
    y_full, full = att.forward_pos(x, keep, pos, full_att=True)
    torch.testing.assert_close(y_chunked, y_full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cls_row, full[:, :, 0])


def test_grid_layout_without_coords_and_torchscript():
    att = _randomised(iRPEMultiheadSelfAttention(4, att_dim=8, n_heads=2, rpe_mode="bias"))
    x = torch.randn(2, 10, 4)  # cls + 9 tokens: a 3 x 3 grid
    grid = torch.tensor([[r, c] for r in range(3) for c in range(3)]).expand(2, 9, 2)
    torch.testing.assert_close(att(x), att(x, coords=grid))
    torch.testing.assert_close(att(x, width=3), att(x, coords=grid))
    scripted = torch.jit.script(att)
    torch.testing.assert_close(scripted(x, None, False, None, None, grid), att(x, coords=grid))


def test_no_position_encoding_mode_and_bad_options():
    att = iRPEMultiheadSelfAttention(4, att_dim=8, n_heads=2, rpe_mode=None)
    assert att.rpe_q is None and att.rpe_k is None and att.rpe_v is None
    with pytest.raises(ValueError, match="rpe_method"):
        iRPEMultiheadSelfAttention(4, rpe_method="polar")
    with pytest.raises(ValueError, match="contextual"):
        iRPEMultiheadSelfAttention(4, att_dim=8, rpe_mode="bias", rpe_on="v")
    with pytest.raises(ValueError, match="rpe_skip"):
        iRPEMultiheadSelfAttention(4, rpe_skip=2)


@pytest.mark.parametrize("rpe", [
    {"rpe_skip": 1},
    {"rpe_skip": 0, "rpe_on": "qkv"},
    {"rpe_skip": 1, "rpe_method": "cross", "rpe_mode": "bias", "rpe_on": "qk", "rpe_shared_head": False},
], ids=["skip1-k", "skip0-qkv", "cross-bias-qk"])
def test_torchmil_layout_equals_torchmil_and_is_padding_invariant(rpe):
    """layout="torchmil": the reference's square padding (zero tokens as keys) and its head reshape, per bag."""
    torchmil_attention = pytest.importorskip("torchmil.nn.attention.irpe_multihead_self_attention")
    reference = torchmil_attention.iRPEMultiheadSelfAttention(8, att_dim=8, n_heads=2, **rpe).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    att = iRPEMultiheadSelfAttention(8, att_dim=8, n_heads=2, layout="torchmil", **rpe).eval()
    att.load_state_dict(reference.state_dict())
    # torchmil pads a non-square sequence only without a skip token (with one it pads too far and fails)
    lengths = (2, 5, 10, 17) if rpe["rpe_skip"] else (1, 2, 3, 5, 10, 17)
    X = torch.zeros(len(lengths), max(lengths), 8)
    keep = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    with torch.no_grad():
        for b, n in enumerate(lengths):
            X[b, :n] = torch.randn(n, 8, generator=gen)
            keep[b, :n] = True
            y_ref, att_ref = reference(X[b : b + 1, :n], return_att=True)
            y, full = att.forward_pos(X[b : b + 1, :n], keep[b : b + 1, :n], torch.zeros(1, n, 2, dtype=torch.long),
                                      True)
            torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(full, att_ref, atol=1e-6, rtol=0)
        y_batch, row = att.forward_pos(X, keep, torch.zeros(len(lengths), max(lengths), 2, dtype=torch.long))
        for b, n in enumerate(lengths):
            y_alone, row_alone = att.forward_pos(X[b : b + 1, :n], keep[b : b + 1, :n],
                                                 torch.zeros(1, n, 2, dtype=torch.long))
            torch.testing.assert_close(y_batch[b, :n], y_alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(row[b, :, :n], row_alone[0], atol=1e-6, rtol=0)
            assert (row[b, :, n:] == 0).all()
    with pytest.raises(ValueError, match="layout must be one of"):
        iRPEMultiheadSelfAttention(8, layout="square")
