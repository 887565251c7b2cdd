import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from milsdk.nn.attention import memory_efficient_attention

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
NEG = -3.4028234663852886e38


def naive(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], NEG)
    return (torch.softmax(scores, dim=-1) @ v) * mask.any(dim=1)[:, None, None, None]


def _qkv(B, H, Nq, Nk, d, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, Nq, d, generator=g),
        torch.randn(B, H, Nk, d, generator=g),
        torch.randn(B, H, Nk, dv, generator=g),
    )


def test_hand_computed_one_query_three_keys():
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]])
    v = torch.tensor([[[[1.0], [2.0], [3.0]]]])
    w = [math.exp(s / math.sqrt(2)) for s in (1.0, 0.0, 1.0)]
    expected = sum(wi * vi for wi, vi in zip(w, (1.0, 2.0, 3.0))) / sum(w)
    out = memory_efficient_attention(q, k, v, torch.ones(1, 3, dtype=torch.bool))
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(expected, abs=1e-6)
    # the masked third key is ignored: weights over the first two only
    out = memory_efficient_attention(q, k, v, torch.tensor([[True, True, False]]))
    assert out.item() == pytest.approx((w[0] * 1 + w[1] * 2) / (w[0] + w[1]), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_equals_naive_attention_for_any_chunking(chunk_size):
    q, k, v = _qkv(3, 2, 53, 41, 8, 5)
    mask = torch.rand(3, 41, generator=torch.Generator().manual_seed(1)) > 0.3
    out = memory_efficient_attention(q, k, v, mask, chunk_size=chunk_size)
    assert out.shape == (3, 2, 53, 5)
    assert torch.allclose(out, naive(q, k, v, mask), atol=1e-6)


def test_padding_never_changes_real_outputs_and_uint8_masks_work():
    q, k, v = _qkv(2, 2, 10, 30, 4, 4)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :30] = True
    mask[1, :12] = True
    out = memory_efficient_attention(q, k, v, mask.to(torch.uint8), chunk_size=8)
    alone = memory_efficient_attention(q[1:], k[1:, :, :12], v[1:, :, :12], None, chunk_size=8)
    assert torch.allclose(out[1:], alone, atol=1e-6)
    k_noise = k.clone()
    k_noise[1, :, 12:] = 1e4  # huge padded keys must not matter
    assert torch.allclose(memory_efficient_attention(q, k_noise, v, mask, chunk_size=8), out, atol=1e-6)


def test_bag_without_real_keys_gives_zero_not_nan():
    q, k, v = _qkv(2, 1, 4, 6, 3, 3)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    out = memory_efficient_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_float16_inputs_are_computed_in_float32():
    q, k, v = _qkv(1, 2, 9, 9, 4, 4)
    mask = torch.ones(1, 9, dtype=torch.bool)
    out = memory_efficient_attention(q.half(), k.half(), v.half(), mask)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), naive(q, k, v, mask), atol=5e-3)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager_at_any_size():
    scripted = torch.jit.script(memory_efficient_attention)
    for n in (1, 5, 300):
        q, k, v = _qkv(2, 2, n, n, 4, 4, seed=n)
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, n // 2 + 1 :] = False
        assert torch.allclose(scripted(q, k, v, mask, 64), naive(q, k, v, mask), atol=1e-6)


class _SelfAttention(torch.nn.Module):
    def __init__(self, chunk_size):
        super().__init__()
        self.chunk_size = chunk_size

    def forward(self, x, mask):
        q = x.reshape(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)
        return memory_efficient_attention(q, q, q, mask, chunk_size=self.chunk_size)


def _export(tmp_path, chunk_size):
    x = torch.randn(2, 16, 8)
    mask = torch.ones(2, 16, dtype=torch.bool)
    B, N = torch.export.Dim("batch", min=1), torch.export.Dim("n", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _SelfAttention(chunk_size).eval(),
            (x, mask),
            dynamo=True,
            dynamic_shapes=({0: B, 1: N}, {0: B, 1: N}),
            input_names=["x", "mask"],
            output_names=["y"],
            opset_version=18,
            optimize=True,
            report=False,
            verbose=False,
        )
    path = tmp_path / "mea.onnx"
    program.save(str(path))
    return path


def test_onnx_export_is_a_scan_over_query_chunks_exact_at_every_size(tmp_path):
    path = _export(tmp_path, chunk_size=64)
    assert "Scan" in [n.op_type for n in onnx.load(str(path)).graph.node]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5, 31, 32, 33, 700):
        x = torch.randn(3, n, 8)
        mask = torch.rand(3, n) > 0.3
        mask[0, 0] = True
        mask[2] = False
        (got,) = session.run(None, {"x": x.numpy(), "mask": mask.numpy()})
        q = x.reshape(3, n, 2, 4).transpose(1, 2)
        np.testing.assert_allclose(got, naive(q, q, q, mask).numpy(), atol=1e-5)


def _run_peak_mb(session, n):
    def hwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    x = np.random.default_rng(0).standard_normal((1, n, 8), dtype=np.float32)
    mask = np.ones((1, n), bool)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter so that it measures this run only
    base = hwm()
    session.run(None, {"x": x, "mask": mask})
    return hwm() - base


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_onnx_memory_grows_linearly_not_quadratically(tmp_path):
    session = ort.InferenceSession(str(_export(tmp_path, chunk_size=256)), providers=["CPUExecutionProvider"])
    n = 12000
    grown = _run_peak_mb(session, n)
    one_score_matrix = 2 * n * n * 4 / 2**20  # 2 heads, float32: ~1.1 GB for the N x N scores
    assert grown < one_score_matrix / 8, (
        f"peak grew by {grown:.0f} MB, an N x N score matrix is {one_score_matrix:.0f} MB"
    )
