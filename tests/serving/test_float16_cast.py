"""to_float16: onnxruntime's conversion gives numpy's float16 bit for bit, into a caller's buffer when asked."""

import numpy as np
import pytest

from milsdk.serving import float16_cast
from milsdk.serving.float16_cast import ONNXRUNTIME_MIN_ELEMENTS, to_float16

# values where rounding to float16 is decided: the largest finite, ties to even, overflow, subnormals, zeros
EDGES = np.array(
    [65504.0, 65519.99, 65520.0, 65536.0, -65520.0, 1e30, -1e30, 0.0, -0.0, 6.1e-5, 6.0e-8, 5.96e-8, 2.98e-8,
     2.99e-8, 1e-45, 1.0009765625, 1.00048828125, 1.00146484375, -1.00146484375, np.inf, -np.inf],
    dtype=np.float32,
)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16)


def test_large_float32_arrays_are_converted_by_onnxruntime_bit_for_bit_as_numpy():
    assert float16_cast._cast_session() is not None  # onnxruntime and onnx are installed here: the fast path runs
    rng = np.random.default_rng(0)
    every_kind = rng.integers(0, 2**32, size=ONNXRUNTIME_MIN_ELEMENTS * 4, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([every_kind.view(np.float32), np.tile(EDGES, 1000)])
    x = x[~np.isnan(x)]  # NaN payload bits may differ; NaN itself is checked below
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    got = to_float16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    np.testing.assert_array_equal(_bits(got), _bits(expected))


def test_nan_stays_nan_and_inf_stays_inf():
    x = np.zeros(ONNXRUNTIME_MIN_ELEMENTS, np.float32)
    x[[3, 10, 99]] = [np.nan, np.inf, -np.inf]
    got = to_float16(x)
    assert np.isnan(got[3]) and got[10] == np.inf and got[99] == -np.inf
    assert np.count_nonzero(got) == 3


def test_writes_into_the_given_buffer_and_returns_it():
    x = np.random.default_rng(1).standard_normal((300, 257), dtype=np.float32)  # > the numpy threshold
    region = np.full(x.size + 10, 7, np.float16)
    view = region[5 : 5 + x.size].reshape(x.shape)
    assert to_float16(x, view) is view
    np.testing.assert_array_equal(_bits(view), _bits(x.astype(np.float16)))
    assert np.all(region[:5] == 7) and np.all(region[-5:] == 7)  # nothing written outside the view


def test_non_contiguous_and_small_and_other_dtypes_agree_with_numpy():
    rng = np.random.default_rng(2)
    wide = rng.standard_normal((512, 300), dtype=np.float32)
    for x in (wide[:, ::2], wide[:4, :4], wide.astype(np.float64)):
        np.testing.assert_array_equal(_bits(to_float16(x)), _bits(x.astype(np.float16)))
    half = wide.astype(np.float16)
    assert to_float16(half) is half  # already float16: no copy


def test_numpy_converts_when_onnxruntime_is_missing(monkeypatch):
    monkeypatch.setattr(float16_cast, "_session", None)
    monkeypatch.setattr(float16_cast, "_unavailable", True)
    x = np.random.default_rng(3).standard_normal(ONNXRUNTIME_MIN_ELEMENTS * 2, dtype=np.float32)
    out = np.empty(x.shape, np.float16)
    assert to_float16(x, out) is out
    np.testing.assert_array_equal(_bits(out), _bits(x.astype(np.float16)))


@pytest.mark.parametrize("out", [np.empty((4, 4), np.float32), np.empty((4, 5), np.float16),
                                 np.empty((4, 8), np.float16)[:, ::2]])
def test_a_wrong_buffer_is_refused_with_what_it_is(out):
    with pytest.raises(ValueError, match=r"out must be a writable C-contiguous float16 array of shape \(4, 4\)"):
        to_float16(np.zeros((4, 4), np.float32), out)
