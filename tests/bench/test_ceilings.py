import numpy as np

from milsdk.bench.ceilings import GemmResult, best_of, gemm_ceilings, loopback_bandwidth, memory_bandwidth


def test_every_runtime_gives_a_positive_rate_on_every_shape():
    results = gemm_ceilings([(64, 32, 16), (32, 32, 32)], repeats=2)
    assert {(r.runtime, r.shape) for r in results} == {
        (rt, s) for rt in ("numpy", "torch", "onnxruntime") for s in ("[64x32]x[32x16]", "[32x32]x[32x32]")
    }
    assert all(np.isfinite(r.gflops) and r.gflops > 0 for r in results)


def test_gflops_counts_two_flops_per_multiply_add():
    assert GemmResult("x", 1000, 1000, 1000, seconds=2.0).gflops == 1.0


def test_best_of_is_the_fastest_call():
    delays = iter([0.0, 0.03, 0.0, 0.02])  # warm-up, then three calls

    def call():
        import time

        time.sleep(next(delays, 0.0))

    assert best_of(call, repeats=3) < 0.02


def test_memory_bandwidth_is_positive():
    assert 0 < memory_bandwidth(4 << 20, repeats=2) < 1e5


def test_loopback_bandwidth_moves_every_byte_and_is_positive():
    assert 0 < loopback_bandwidth(3 << 20, repeats=2) < 1e4
