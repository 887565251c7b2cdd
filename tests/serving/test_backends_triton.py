"""TritonBackend's wire arrays: what a request carries for each input (the server paths are exercised against a
real Triton in tests/integration/test_triton_server.py and test_triton_faults.py)."""

import numpy as np

from milsdk.serving.backends.triton import TritonBackend, _Connection


def _backend(config_inputs: dict[str, str]) -> TritonBackend:
    backend = object.__new__(TritonBackend)  # no server: only the config's input types matter here
    backend._config_inputs = config_inputs
    return backend


def test_float16_inputs_are_converted_into_the_connections_scratch_buffer_reused_across_requests():
    backend = _backend({"features": "TYPE_FP16", "mask": "TYPE_BOOL"})
    connection = _Connection()
    rng = np.random.default_rng(0)
    big = rng.standard_normal((2, 300, 256), dtype=np.float32)
    mask = np.ones((2, 300), bool)
    wire = backend._wire_arrays(connection, {"features": big, "mask": mask})
    assert wire["features"].dtype == np.float16 and wire["features"].shape == big.shape
    np.testing.assert_array_equal(wire["features"], big.astype(np.float16))
    assert wire["mask"] is mask  # already contiguous and of its wire type: sent as it is
    scratch = connection.scratch
    assert np.shares_memory(wire["features"], scratch)

    small = rng.standard_normal((1, 10, 256), dtype=np.float32)
    wire = backend._wire_arrays(connection, {"features": small, "mask": mask[:1, :10]})
    assert connection.scratch is scratch and np.shares_memory(wire["features"], scratch)  # no new buffer
    np.testing.assert_array_equal(wire["features"], small.astype(np.float16))

    larger = rng.standard_normal((3, 300, 256), dtype=np.float32)
    wire = backend._wire_arrays(connection, {"features": larger, "mask": np.ones((3, 300), bool)})
    assert connection.scratch.size == larger.size  # grown to the larger request
    np.testing.assert_array_equal(wire["features"], larger.astype(np.float16))


def test_float32_inputs_travel_as_they_are_and_non_contiguous_ones_are_made_contiguous():
    backend = _backend({"features": "TYPE_FP32", "mask": "TYPE_BOOL"})
    connection = _Connection()
    x = np.random.default_rng(1).standard_normal((1, 8, 16), dtype=np.float32)
    strided = np.random.default_rng(2).standard_normal((1, 8, 32), dtype=np.float32)[..., ::2]
    assert backend._wire_arrays(connection, {"features": x})["features"] is x
    wire = backend._wire_arrays(connection, {"features": strided})["features"]
    assert wire.flags.c_contiguous and np.array_equal(wire, strided)
    assert connection.scratch is None
