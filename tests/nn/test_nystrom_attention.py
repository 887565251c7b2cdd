import math

import pytest
import torch

from milsdk.nn.attention import NystromAttention, moore_penrose_iter_pinv, nystrom_attention_rows

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def _padded_batch(lengths, n_max, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(len(lengths), n_max, dim, generator=g)
    mask = torch.zeros(len(lengths), n_max, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return X, mask


def test_hand_computed_three_tokens_equal_softmax_attention():
    # 3 tokens, 2 features, q = k = v = x; with 3 <= m landmarks each landmark is one token: exact attention.
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    att = NystromAttention(2, learn_weights=False, n_heads=1, n_landmarks=4, pinv_iterations=20)
    y = att(x)
    expected = []
    for i in range(3):
        scores = [sum(a * b for a, b in zip(x[0, i], x[0, j])) / math.sqrt(2) for j in range(3)]
        w = [math.exp(s) for s in scores]
        w = [v / sum(w) for v in w]
        expected.append([sum(w[j] * float(x[0, j, c]) for j in range(3)) for c in range(2)])
    assert torch.allclose(y[0], torch.tensor(expected), atol=1e-5)


def test_equals_softmax_attention_when_tokens_fit_landmarks_default_iterations():
    g = torch.Generator().manual_seed(1)
    n, d = 6, 8
    x = 3.0 * torch.eye(d)[:n].unsqueeze(0) + 0.1 * torch.randn(1, n, d, generator=g)  # well-conditioned
    att = NystromAttention(d, learn_weights=False, n_heads=1, n_landmarks=8)  # 6 pinv iterations
    y, factors = att(x, return_att=True)
    A = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(d), dim=-1)
    assert (y - A @ x).abs().max() <= 1e-4
    assert ((factors[0] @ factors[1] @ factors[2])[:, 0] - A).abs().max() <= 1e-4


def test_equals_softmax_attention_with_learned_projections_when_pinv_converges():
    torch.manual_seed(0)
    att = NystromAttention(16, att_dim=16, n_heads=2, n_landmarks=32, pinv_iterations=25)
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        y = att(x)
        q, k, v = att.qkv(x).chunk(3, dim=-1)

        def heads(t):
            return t.reshape(2, 20, 2, 8).transpose(1, 2)

        A = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8), dim=-1)
        ref = att.out_proj((A @ heads(v)).transpose(1, 2).reshape(2, 20, 16))
    assert (y - ref).abs().max() <= 1e-4


def test_pinv_of_well_conditioned_matrix_is_its_inverse():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(3, 10, 10, generator=g) + 10 * torch.eye(10)
    assert (moore_penrose_iter_pinv(M) - torch.linalg.inv(M)).abs().max() <= 1e-5


def test_pinv_scaling_is_per_matrix_not_per_batch():
    g = torch.Generator().manual_seed(3)
    M = torch.randn(3, 6, 6, generator=g) + 6 * torch.eye(6)
    alone = torch.stack([moore_penrose_iter_pinv(M[i : i + 1])[0] for i in range(3)])
    scaled = torch.stack([M[0], 1000 * M[1], M[2] / 1000])  # a global max would change the other matrices
    together = moore_penrose_iter_pinv(scaled)
    assert (together[0] - alone[0]).abs().max() <= 1e-6
    assert (together[1] * 1000 - alone[1]).abs().max() <= 1e-5
    assert (together[2] / 1000 - alone[2]).abs().max() <= 1e-5


def test_pinv_zero_matrix_and_zero_padded_block():
    assert torch.equal(moore_penrose_iter_pinv(torch.zeros(2, 4, 4)), torch.zeros(2, 4, 4))
    g = torch.Generator().manual_seed(4)
    S = torch.softmax(torch.randn(5, 5, generator=g), dim=-1) + torch.eye(5)
    block = torch.zeros(8, 8)
    block[:5, :5] = S
    P = moore_penrose_iter_pinv(block)
    assert (P[:5, :5] - moore_penrose_iter_pinv(S)).abs().max() <= 1e-6
    assert P[5:].abs().max() == 0 and P[:, 5:].abs().max() == 0


@pytest.mark.parametrize("n_landmarks", [1, 4, 64])
def test_padding_never_changes_real_outputs(n_landmarks):
    torch.manual_seed(0)
    att = NystromAttention(12, att_dim=16, n_heads=4, n_landmarks=n_landmarks).eval()
    lengths = [41, 17, 4, 1]
    X, mask = _padded_batch(lengths, 41, 12)
    with torch.no_grad():
        y, factors = att(X, mask, return_att=True)
        rows = nystrom_attention_rows(factors, torch.tensor([0]))  # (B, h, 1, L)
        for b, n in enumerate(lengths):
            y_alone, f_alone = att(X[b : b + 1, :n], return_att=True)
            assert (y[b, :n] - y_alone[0]).abs().max() <= 1e-5
            assert (y[b, n:] == 0).all()
            row_alone = nystrom_attention_rows(f_alone, torch.tensor([0]))[0]
            assert (rows[b, :, :, :n] - row_alone).abs().max() <= 1e-5
            assert (rows[b, :, :, n:] == 0).all()


def test_mask_with_holes_equals_compacted_bag():
    torch.manual_seed(0)
    att = NystromAttention(8, att_dim=8, n_heads=2, n_landmarks=3).eval()
    X = torch.randn(1, 10, 8)
    keep = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1, 0, 1]], dtype=torch.bool)
    with torch.no_grad():
        y = att(X, keep)
        y_compact = att(X[:, keep[0]])
    assert (y[:, keep[0]] - y_compact).abs().max() <= 1e-5


def test_uint8_and_bool_masks_equal():
    torch.manual_seed(0)
    att = NystromAttention(8, att_dim=8, n_heads=2, n_landmarks=4)
    X, mask = _padded_batch([9, 3], 9, 8)
    assert torch.equal(att(X, mask), att(X, mask.to(torch.uint8)))


def test_one_token_bag_returns_projected_value():
    torch.manual_seed(0)
    att = NystromAttention(6, att_dim=8, n_heads=2, n_landmarks=4)
    x = torch.randn(1, 1, 6)
    y, (k1, pinv, k3) = att(x, return_att=True)
    v = att.qkv(x).chunk(3, dim=-1)[2]
    assert torch.allclose(y, att.out_proj(v), atol=1e-6)
    assert torch.allclose(k1, torch.ones_like(k1)) and torch.allclose(pinv, torch.ones_like(pinv))


def test_all_masked_row_is_finite_zero_and_harmless():
    torch.manual_seed(0)
    att = NystromAttention(8, att_dim=8, n_heads=2, n_landmarks=4)
    X, mask = _padded_batch([7, 0], 7, 8)
    y, factors = att(X, mask, return_att=True)
    assert torch.isfinite(y).all() and all(torch.isfinite(f).all() for f in factors)
    assert y[1].abs().max() == 0
    assert (y[0] - att(X[:1])[0]).abs().max() <= 1e-5
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in att.parameters())


def test_attention_factor_shapes_cap_landmarks_at_length():
    att = NystromAttention(8, out_dim=5, att_dim=12, n_heads=3, n_landmarks=16)
    y, (k1, pinv, k3) = att(torch.randn(2, 10, 8), return_att=True)
    assert y.shape == (2, 10, 5)
    assert k1.shape == (2, 3, 10, 10) and pinv.shape == (2, 3, 10, 10) and k3.shape == (2, 3, 10, 10)
    _, (k1, pinv, k3) = att(torch.randn(2, 40, 8), return_att=True)
    assert k1.shape == (2, 3, 40, 16) and pinv.shape == (2, 3, 16, 16) and k3.shape == (2, 3, 16, 40)
    assert torch.allclose(k1.sum(-1), torch.ones(2, 3, 40))
    assert torch.allclose(k3.sum(-1), torch.ones(2, 3, 16))


def test_invalid_configuration_raises():
    with pytest.raises(ValueError, match="n_heads"):
        NystromAttention(8, att_dim=10, n_heads=4)
    with pytest.raises(ValueError, match="n_landmarks"):
        NystromAttention(8, n_landmarks=0)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    att = NystromAttention(8, att_dim=16, n_heads=4, n_landmarks=5).eval()
    scripted = torch.jit.script(att)
    for lengths, n_max in (([13, 6, 1], 13), ([2], 2), ([30, 0], 30)):
        X, mask = _padded_batch(lengths, n_max, 8)
        y, factors = scripted(X, mask, True)
        y_ref, factors_ref = att(X, mask, return_att=True)
        assert (y - y_ref).abs().max() <= 1e-6
        assert all((a - b).abs().max() <= 1e-6 for a, b in zip(factors, factors_ref))


# ---- landmarks="torchmil": torchmil 1.0.2's scheme, bag by bag ---------------------------------------------


def _torchmil_pair(in_dim=8, att_dim=16, n_heads=2, n_landmarks=5, seed=0):
    """torchmil's NystromAttention with random weights and milsdk's torchmil scheme holding the same weights
    (milsdk's out_proj set to the identity torchmil has at out_dim == att_dim)."""
    from torchmil.nn.attention import NystromAttention as Reference

    torch.manual_seed(seed)
    ref = Reference(att_dim, att_dim=att_dim, n_heads=n_heads, n_landmarks=n_landmarks).eval()
    ours = NystromAttention(att_dim, att_dim=att_dim, n_heads=n_heads, n_landmarks=n_landmarks,
                            landmarks="torchmil").eval()
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.qkv_nn.weight)
        ours.out_proj.weight.copy_(torch.eye(att_dim))
        ours.out_proj.bias.zero_()
    return ref, ours


@pytest.mark.parametrize("length", [1, 4, 5, 6, 11, 23, 100])
def test_torchmil_scheme_equals_torchmil_on_a_bag(length):
    # Below, at and above n_landmarks = 5, a multiple of it and not: the front zero tokens, the all-zero
    # landmarks and the windows of l_b tokens are all exercised; torchmil's float32 pinv vs milsdk's float64.
    ref, ours = _torchmil_pair()
    x = torch.randn(1, length, 16, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        y_ref, att_ref = ref(x, return_att=True)
        y, factors = ours(x, return_att=True)
    assert (y - y_ref).abs().max() <= 1e-5
    k1, pinv, k3 = factors
    assert k1.shape == (1, 2, length, 5)  # always n_landmarks landmarks, as torchmil
    assert ((k1 @ pinv @ k3) - att_ref).abs().max() <= 1e-5


def test_torchmil_scheme_hand_computed_landmarks():
    # 3 tokens, m = 2: one zero token in front, windows [0, x0] and [x1, x2], each divided by l = 2. With
    # q = k = v = x and one head, kernel3's row for landmark 0 is softmax over (zero key, x0, x1, x2) minus
    # the zero key's column.
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    att = NystromAttention(2, learn_weights=False, n_heads=1, n_landmarks=2, landmarks="torchmil")
    _, (k1, _, k3) = att(x, return_att=True)
    land = torch.stack([x[0, 0] / 2, (x[0, 1] + x[0, 2]) / 2])
    s = 2**-0.5
    scores3 = torch.cat([torch.zeros(2, 1), land @ x[0].T], dim=1) * s
    assert torch.allclose(k3[0, 0], torch.softmax(scores3, dim=-1)[:, 1:], atol=1e-6)
    assert torch.allclose(k1[0, 0], torch.softmax(x[0] @ land.T * s, dim=-1), atol=1e-6)


def test_torchmil_scheme_padding_never_changes_real_outputs():
    _, ours = _torchmil_pair(seed=1)
    lengths = [13, 5, 1, 0]
    X, mask = _padded_batch(lengths, 13, 16, seed=2)
    with torch.no_grad():
        y = ours(X, mask)
        for b, n in enumerate(lengths):
            if n:
                assert (y[b, :n] - ours(X[b : b + 1, :n])[0]).abs().max() <= 1e-5
    assert torch.isfinite(y).all() and (y[3] == 0).all()


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchmil_scheme_torchscript_matches_eager():
    _, ours = _torchmil_pair(seed=3)
    scripted = torch.jit.script(ours)
    X, mask = _padded_batch([9, 3], 9, 16)
    assert (scripted(X, mask, False) - ours(X, mask)).abs().max() <= 1e-6


def test_unknown_landmark_scheme_raises():
    with pytest.raises(ValueError, match="landmarks='lucidrains'"):
        NystromAttention(8, landmarks="lucidrains")


def test_pinv_shared_over_heads_equals_torchmil_for_one_bag():
    # torchmil scales by the maximum over its whole batch; for one bag that is the maximum over its heads.
    from torchmil.nn.attention.nystrom_attention import moore_penrose_iter_pinv as reference

    x = torch.softmax(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    x[0, 1] *= 3.0  # heads with different norms: the shared scale differs from each head's own
    ours = moore_penrose_iter_pinv(x, 2, shared_axes=1)
    assert torch.allclose(ours, reference(x.float(), 2).double(), atol=1e-6)
    assert not torch.allclose(ours, moore_penrose_iter_pinv(x, 2), atol=1e-3)


@pytest.mark.parametrize("landmarks", ["segments", "torchmil"])
@pytest.mark.parametrize("length, chunk_size", [(1, 4), (5, 4), (50, 16), (50, 4096), (301, 64), (300, 7)])
def test_chunked_equals_unchunked(landmarks, length, chunk_size):
    torch.manual_seed(0)
    att = NystromAttention(32, att_dim=32, n_heads=4, n_landmarks=8, landmarks=landmarks).eval()
    x = torch.randn(3, length, 32)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, length // 2 + 1 :] = False  # padding at the end
    mask[2, ::3] = length == 1  # holes (a one-token bag keeps its token)
    with torch.no_grad():
        expected = att(x, mask)
        got = att.forward_chunked(x, mask, chunk_size)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-6
    assert (got[~mask] == 0).all()  # padded positions are exactly 0, as unchunked


@pytest.mark.parametrize("length, chunk_size", [(5, 4), (50, 16), (50, 4096), (301, 64)])
def test_chunked_norm_and_residual_equal_the_pre_norm_composition(length, chunk_size):
    """``norm`` normalises each chunk it reads, ``residual`` adds the input chunk by chunk: the same numbers as
    ``x + att(layer_norm(x))`` (what a pre-norm layer computes) without the whole normalised sequence."""
    torch.manual_seed(3)
    att = NystromAttention(32, att_dim=32, n_heads=4, n_landmarks=8).eval()
    norm = torch.nn.LayerNorm(32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, length, 32) * 3 + 1
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, length // 2 + 1 :] = False
    parameters = (norm.weight, norm.bias, norm.eps)
    with torch.no_grad():
        expected = x + att.forward_chunked(norm(x), mask, chunk_size)
        got = att.forward_chunked(x, mask, chunk_size, norm=parameters, residual=True)
        only_norm = att.forward_chunked(x, mask, chunk_size, norm=parameters)
        y_row, row = att.forward_row_chunked(x, mask, chunk_size, row=0, norm=parameters)
        y_row_ref, row_ref = att.forward_row_chunked(norm(x), mask, chunk_size, row=0)
    assert (got - expected).abs().max() <= 1e-5
    assert torch.equal(got[~mask], x[~mask])  # padded positions: the input itself, as x + 0
    assert (only_norm - att.forward_chunked(norm(x), mask, chunk_size)).abs().max() <= 1e-6
    assert (y_row - y_row_ref).abs().max() <= 1e-6 and (row - row_ref).abs().max() <= 1e-7


def test_a_bag_that_fits_one_chunk_takes_the_unchunked_path_exactly():
    """Eagerly the chunk count is known: one chunk is forward itself (bit for bit), whatever the export bound."""
    torch.manual_seed(1)
    att = NystromAttention(16, att_dim=16, n_heads=2, n_landmarks=4).eval()
    x, mask = torch.randn(2, 70, 16), torch.ones(2, 70, dtype=torch.bool)
    mask[0, 33:] = False
    with torch.no_grad():
        assert torch.equal(att.forward_chunked(x, mask, chunk_size=70, length_bound=500), att(x, mask))
        chunked = att.forward_chunked(x, mask, chunk_size=8, length_bound=500)
    assert (chunked - att(x, mask)).abs().max() <= 1e-6


def test_chunked_scripts_and_exports_as_one_graph_for_every_length(tmp_path):
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(2)
    att = NystromAttention(16, att_dim=16, n_heads=2, n_landmarks=4).eval()

    class Chunked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = att

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.att.forward_chunked(x, mask, 8)

    x, mask = torch.randn(2, 20, 16), torch.ones(2, 20, dtype=torch.bool)
    scripted = torch.jit.script(Chunked())
    B, L = torch.export.Dim("B"), torch.export.Dim("L", min=2)
    with torch.no_grad():
        program = torch.onnx.export(
            Chunked(), (x, mask), dynamo=True, dynamic_shapes=({0: B, 1: L}, {0: B, 1: L}), verbose=False
        )
    assert any(node.op_type == "Scan" for node in program.model_proto.graph.node)  # a loop, not unrolled
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for length in (1, 8, 9, 100):  # one chunk, exactly one, two, many: the same artifact
        x, mask = torch.randn(2, length, 16), torch.ones(2, length, dtype=torch.bool)
        mask[1, length // 2 + 1 :] = False
        with torch.no_grad():
            expected = att(x, mask)
            assert (scripted(x, mask) - expected).abs().max() <= 1e-6
        got = session.run(None, dict(zip(names, [x.numpy(), mask.numpy()])))[0]
        assert np.abs(got - expected.numpy()).max() <= 1e-5, length


@pytest.mark.parametrize("landmarks", ["segments", "torchmil"])
@pytest.mark.parametrize("length, chunk_size", [(1, 4), (5, 4), (50, 50), (301, 64), (300, 7)])
def test_row_chunked_equals_that_row_of_forward_and_the_exact_attention_row(landmarks, length, chunk_size):
    """The class-row form: the row of the full output, and the exact attention row, from one pass over chunks."""
    torch.manual_seed(3)
    att = NystromAttention(32, att_dim=32, n_heads=4, n_landmarks=8, landmarks=landmarks).eval()
    x = torch.randn(3, length, 32)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, length // 2 + 1 :] = False
    mask[2, 1::3] = False  # holes; token 0, the row asked for, stays real
    with torch.no_grad():
        y, row = att.forward_row_chunked(x, mask, chunk_size, row=0)
        y_only, empty = att.forward_row_chunked(x, mask, chunk_size, row=0, need_att=False)
        expected_y = att(x, mask)[:, :1]
        expected_row = att.exact_attention_row(x, mask, row=0)
    assert y.shape == (3, 1, 32) and row.shape == (3, 4, length)
    assert (y - expected_y).abs().max() <= 1e-6
    assert (row - expected_row).abs().max() <= 1e-6
    assert torch.equal(y_only, y) and empty.numel() == 0
    assert (row[~mask[:, None, :].expand_as(row)] == 0).all()
    torch.testing.assert_close(row.sum(dim=-1), torch.ones(3, 4))


def test_row_chunked_scripts_and_exports_as_one_graph_for_every_length():
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(4)
    att = NystromAttention(16, att_dim=16, n_heads=2, n_landmarks=4).eval()

    class Row(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = att

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.att.forward_row_chunked(x, mask, 8)

    x, mask = torch.randn(2, 20, 16), torch.ones(2, 20, dtype=torch.bool)
    scripted = torch.jit.script(Row())
    B, L = torch.export.Dim("B"), torch.export.Dim("L", min=2)
    with torch.no_grad():
        program = torch.onnx.export(
            Row(), (x, mask), dynamo=True, dynamic_shapes=({0: B, 1: L}, {0: B, 1: L}), verbose=False
        )
    assert sum(node.op_type == "Scan" for node in program.model_proto.graph.node) == 2  # sums, values: no rows scan
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for length in (1, 8, 9, 100):
        x, mask = torch.randn(2, length, 16), torch.ones(2, length, dtype=torch.bool)
        mask[1, length // 2 + 1 :] = False
        with torch.no_grad():
            expected = (att(x, mask)[:, :1], att.exact_attention_row(x, mask))
            for got, want in zip(scripted(x, mask), expected):
                assert (got - want).abs().max() <= 1e-6
        for got, want in zip(session.run(None, dict(zip(names, [x.numpy(), mask.numpy()]))), expected):
            assert np.abs(got - want.numpy()).max() <= 1e-5, length
