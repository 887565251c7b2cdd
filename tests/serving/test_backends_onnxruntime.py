import numpy as np
import onnx
import pytest
import torch

from milsdk.contract import METADATA_KEY
from milsdk.errors import ArtifactError, ServingError
from milsdk.export import DeploymentModule, export_onnx
from milsdk.serving.backends import open_artifact
from milsdk.serving.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
from milsdk.serving.planner import pad_batch


def padded(bags):
    return pad_batch([{"features": b} for b in bags], max(len(b) for b in bags), ["features", "mask"])


def test_padded_batch_matches_eager_pytorch(abmil_model, abmil_onnx, make_bags):
    backend = OnnxRuntimeBackend(abmil_onnx)
    inputs = padded(make_bags([3, 50, 1, 17]))
    out = backend.run(inputs)
    with torch.no_grad():
        logits, attention = DeploymentModule(abmil_model)(
            torch.from_numpy(inputs["features"]), torch.from_numpy(inputs["mask"])
        )
    assert out["logits"].shape == (4, 1) and out["attention"].shape == (4, 50)
    assert out["logits"].dtype == out["attention"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["attention"], attention.numpy(), atol=1e-5)
    assert (out["attention"][~inputs["mask"]] == 0).all()


def test_metadata_threads_and_arena_shrinkage(abmil_onnx):
    backend = open_artifact(abmil_onnx, intra_op_threads=1, inter_op_threads=1)
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.info.model_name == "ABMIL" and backend.info.feature_dim == 24
    assert backend.info.inputs == ["features", "mask"]
    assert backend.max_batch_size is None
    options = backend.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert backend.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert backend.providers == ["CPUExecutionProvider"]


def test_provider_preference_tensorrt_cuda_cpu():
    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    assert choose_providers([cpu, "AzureExecutionProvider", cuda, trt]) == [trt, cuda, cpu]
    assert choose_providers([cuda]) == [cuda, cpu]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_float16_features_input_is_fed_float16(abmil_model, abmil_onnx, tmp_path, make_bags):
    path = export_onnx(abmil_model, tmp_path / "fp16.onnx", features_dtype="float16")
    backend = OnnxRuntimeBackend(path)
    inputs = padded(make_bags([5, 9]))
    assert inputs["features"].dtype == np.float32
    out = backend.run(inputs)  # the backend casts the features to the graph's float16 input
    full = OnnxRuntimeBackend(abmil_onnx).run(inputs)
    # float16 rounding of the inputs only: a loose, stated tolerance
    np.testing.assert_allclose(out["logits"], full["logits"], atol=1e-2)
    np.testing.assert_allclose(out["attention"], full["attention"], atol=1e-2)


def test_bad_artifacts_are_one_line_errors_naming_the_file(abmil_onnx, tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        open_artifact(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    # refused by the external-data check, which parses the file before onnxruntime opens anything
    with pytest.raises(ArtifactError, match=f"{garbage}: not a readable ONNX model"):
        open_artifact(garbage)
    proto = onnx.load(str(abmil_onnx))
    for prop in [p for p in proto.metadata_props if p.key == METADATA_KEY]:
        proto.metadata_props.remove(prop)
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ArtifactError, match="no milsdk metadata"):
        open_artifact(bare)
    with pytest.raises(ArtifactError, match="unknown artifact type '.bin'"):
        (tmp_path / "model.bin").write_bytes(b"")
        open_artifact(tmp_path / "model.bin")


def test_a_failing_run_is_a_serving_error(abmil_onnx):
    backend = OnnxRuntimeBackend(abmil_onnx)
    with pytest.raises(ServingError, match="onnxruntime failed on a batch of shape 1x3x7"):
        backend.run({"features": np.zeros((1, 3, 7), np.float32), "mask": np.ones((1, 3), bool)})


def test_threads_stop_spinning_after_a_run(abmil_onnx):
    options = OnnxRuntimeBackend(abmil_onnx).session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_the_arena_is_released_after_a_batch_at_most_half_the_largest_held(abmil_onnx, make_bags):
    backend = OnnxRuntimeBackend(abmil_onnx)
    shrinking, keeping = backend.run_options, backend._keep_options
    with pytest.raises(RuntimeError):  # onnxruntime: no such entry
        keeping.get_run_config_entry("memory.enable_memory_arena_shrinkage")
    # B * N of each batch: the same size again keeps the arena warm; a batch of at most half releases it
    sizes = [1000, 1000, 600, 500, 500, 2000, 999, 1000]
    chosen = [backend._options_for(n) for n in sizes]
    assert [c is shrinking for c in chosen] == [False, False, False, True, False, False, True, False]
    # the runs themselves are unchanged by the options
    inputs = padded(make_bags([40, 3]))
    first = backend.run(inputs)
    backend.run(padded(make_bags([200, 200, 200])))
    again = backend.run(inputs)  # after a 3 x 200 batch, this 2 x 40 one releases the arena
    np.testing.assert_array_equal(first["logits"], again["logits"])
    never = OnnxRuntimeBackend(abmil_onnx, shrink_arena=False)
    assert [never._options_for(n) is never._keep_options for n in (1000, 1, 1)] == [True, True, True]


def _int8_weights_artifact(source, path):
    """``source`` quantised with int8 weights, as milsdk did before it used uint8, metadata kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, path, weight_type=QuantType.QInt8, per_channel=True)
    proto, original = onnx.load(path), onnx.load(source)
    del proto.metadata_props[:]
    proto.metadata_props.extend(original.metadata_props)
    onnx.save(proto, path)
    return path


def test_int8_weights_on_a_cpu_without_vnni_are_warned_about_in_one_line(abmil_onnx, tmp_path, monkeypatch, caplog):
    import milsdk.utils.cpu
    from milsdk.export.quantize import quantize_int8
    from milsdk.serving.backends.onnxruntime import int8_weight_products

    old = _int8_weights_artifact(abmil_onnx, tmp_path / "int8_weights.onnx")
    current = tmp_path / "uint8_weights.onnx"
    onnx.save(quantize_int8(onnx.load(abmil_onnx)), current)
    assert int8_weight_products(onnx.load(old).graph) and not int8_weight_products(onnx.load(current).graph)
    assert not int8_weight_products(onnx.load(abmil_onnx).graph)
    for flags, warned in (({"avx2"}, True), ({"avx2", "avx512_vnni"}, False)):
        monkeypatch.setattr(milsdk.utils.cpu, "cpu_flags", lambda flags=flags: frozenset(flags))
        for path, int8 in ((old, True), (current, False)):
            caplog.clear()
            OnnxRuntimeBackend(path)
            warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
            if warned and int8:
                assert len(warnings) == 1 and str(path) in warnings[0] and "export it again" in warnings[0]
                assert "\n" not in warnings[0]
            else:
                assert warnings == []
