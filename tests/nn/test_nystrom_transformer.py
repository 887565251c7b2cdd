import pytest
import torch

from milsdk.nn.transformers import NystromTransformerEncoder, NystromTransformerLayer

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def _padded_batch(lengths, n_max, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(len(lengths), n_max, dim, generator=g)
    mask = torch.zeros(len(lengths), n_max, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return X, mask


def test_layer_is_pre_norm_residual():
    torch.manual_seed(0)
    layer = NystromTransformerLayer(8, att_dim=8, n_heads=2, n_landmarks=4).eval()
    X, mask = _padded_batch([6, 3], 6, 8)
    with torch.no_grad():
        expected = X + layer.att(layer.norm1(X), mask)
        assert (layer(X, mask) - expected).abs().max() <= 1e-6


def test_layer_projections_mlp_and_attention_shapes():
    layer = NystromTransformerLayer(6, out_dim=5, att_dim=8, n_heads=2, n_landmarks=3, use_mlp=True)
    Y, (k1, pinv, k3) = layer(torch.randn(2, 9, 6), return_att=True)
    assert Y.shape == (2, 9, 5)
    assert k1.shape == (2, 2, 9, 3) and pinv.shape == (2, 2, 3, 3) and k3.shape == (2, 2, 3, 9)
    assert isinstance(layer.in_proj, torch.nn.Linear) and isinstance(layer.out_proj, torch.nn.Linear)


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_layer_row_chunked_is_that_row_of_the_layer_with_its_exact_attention(chunk_size):
    """One token's output (MLP and in/out projections included) and its attention, without the other rows."""
    torch.manual_seed(1)
    layer = NystromTransformerLayer(6, out_dim=5, att_dim=8, n_heads=2, n_landmarks=3, use_mlp=True).eval()
    X, mask = _padded_batch([9, 4], 9, 6)
    with torch.no_grad():
        Y, att_row = layer.forward_row_chunked(X, mask, chunk_size, row=0)
        expected_row = layer.att.exact_attention_row(layer.norm1(layer.in_proj(X)), mask)
        assert Y.shape == (2, 1, 5) and att_row.shape == (2, 2, 9)
        assert (Y - layer(X, mask)[:, :1]).abs().max() <= 1e-6
        assert (att_row - expected_row).abs().max() <= 1e-6


@pytest.mark.parametrize("use_mlp", [False, True])
def test_layer_chunked_equals_the_layer_in_eval_and_with_dropout_in_training(use_mlp):
    """Eagerly the chunked layer composes norm, attention and residual whole: the unchunked layer's numbers in
    eval, and the same dropout in training."""
    torch.manual_seed(2)
    layer = NystromTransformerLayer(8, att_dim=8, n_heads=2, n_landmarks=4, use_mlp=use_mlp, dropout=0.5)
    X, mask = _padded_batch([40, 17], 40, 8)
    with torch.no_grad():
        layer.norm1.bias.uniform_(-1, 1)
        layer.eval()
        assert (layer.forward_chunked(X, mask, chunk_size=8) - layer(X, mask)).abs().max() <= 1e-5
        layer.train()
        torch.manual_seed(5)
        trained = layer.forward_chunked(X, mask, chunk_size=8)
        torch.manual_seed(5)
        composed = X + layer.dropout(layer.att.forward_chunked(layer.norm1(X), mask, 8))
        if use_mlp:
            composed = composed + layer.mlp(layer.norm2(composed))
    assert (trained - composed).abs().max() <= 1e-6


def test_exported_layer_normalises_and_adds_the_residual_per_chunk_with_the_eager_numbers():
    """Under torch.export the layer normalises each chunk as the attention reads it and adds the residual chunk
    by chunk (no whole norm1(X) in the graph): the exported graph computes what eager computes, at every
    length, and normalises no whole sequence outside its scans."""
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(3)
    layer = NystromTransformerLayer(8, att_dim=8, n_heads=2, n_landmarks=4).eval()
    with torch.no_grad():
        layer.norm1.weight.uniform_(0.5, 1.5)
        layer.norm1.bias.uniform_(-1, 1)

    class Chunked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.layer.forward_chunked(x, mask, 8)
            row, _ = self.layer.forward_row_chunked(x, mask, 8, need_att=False)
            return y, row

    X, mask = _padded_batch([20, 11], 20, 8)
    B, L = torch.export.Dim("B"), torch.export.Dim("L", min=2)
    with torch.no_grad():
        program = torch.onnx.export(
            Chunked(), (X, mask), dynamo=True, dynamic_shapes=({0: B, 1: L}, {0: B, 1: L}), verbose=False
        )
    top_level = [node.op_type for node in program.model_proto.graph.node]
    # scans: 3 for y, 2 for the row; the one LayerNormalization outside them is the row's own query (1 token)
    assert top_level.count("Scan") == 5 and top_level.count("LayerNormalization") == 1
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for lengths in ([1, 1], [9, 3], [40, 17]):
        X, mask = _padded_batch(lengths, max(lengths), 8, seed=sum(lengths))
        got_y, got_row = session.run(None, dict(zip(names, (X.numpy(), mask.numpy()))))
        with torch.no_grad():
            expected = layer(X, mask)
        np.testing.assert_allclose(got_y[mask.numpy()], expected[mask].numpy(), atol=1e-5)
        np.testing.assert_allclose(got_row, expected[:, :1].numpy(), atol=1e-5)


@pytest.mark.parametrize("use_mlp,add_self", [(False, False), (True, True)])
def test_encoder_padding_never_changes_real_outputs(use_mlp, add_self):
    torch.manual_seed(0)
    enc = NystromTransformerEncoder(
        10, 7, att_dim=16, n_heads=4, n_layers=3, n_landmarks=5, use_mlp=use_mlp, add_self=add_self
    ).eval()
    lengths = [33, 12, 5, 1]
    X, mask = _padded_batch(lengths, 33, 10)
    with torch.no_grad():
        Y = enc(X, mask)
        for b, n in enumerate(lengths):
            assert (Y[b, :n] - enc(X[b : b + 1, :n])[0]).abs().max() <= 1e-5


def test_encoder_returns_attention_stacked_over_layers():
    enc = NystromTransformerEncoder(4, att_dim=8, n_heads=2, n_layers=3, n_landmarks=6)
    Y, (k1, pinv, k3) = enc(torch.randn(2, 11, 4), return_att=True)
    assert Y.shape == (2, 11, 4)
    assert k1.shape == (3, 2, 2, 11, 6) and pinv.shape == (3, 2, 2, 6, 6) and k3.shape == (3, 2, 2, 6, 11)


def test_uint8_and_bool_masks_equal_and_all_masked_row_is_finite():
    torch.manual_seed(0)
    enc = NystromTransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2, n_landmarks=3, use_mlp=True)
    X, mask = _padded_batch([8, 0, 2], 8, 6)
    Y = enc(X, mask)
    assert torch.equal(Y, enc(X, mask.to(torch.uint8)))
    assert torch.isfinite(Y).all()
    Y[mask].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_invalid_layer_count_raises():
    with pytest.raises(ValueError, match="n_layers"):
        NystromTransformerEncoder(4, n_layers=0)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    enc = NystromTransformerEncoder(6, 3, att_dim=8, n_heads=2, n_layers=2, n_landmarks=4, use_mlp=True)
    enc.eval()
    layer = NystromTransformerLayer(6, att_dim=8, n_heads=2, n_landmarks=4).eval()
    X, mask = _padded_batch([14, 5, 1], 14, 6)
    with torch.no_grad():
        Y, att = torch.jit.script(enc)(X, mask, True)
        Y_ref, att_ref = enc(X, mask, return_att=True)
        assert (Y - Y_ref).abs().max() <= 1e-6
        assert all((a - b).abs().max() <= 1e-6 for a, b in zip(att, att_ref))
        assert (torch.jit.script(layer)(X, mask) - layer(X, mask)).abs().max() <= 1e-6
