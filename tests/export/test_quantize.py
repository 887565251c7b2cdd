"""int8 dynamic quantisation of exported graphs: folded weight transposes, every constant-weight product int8,
metadata kept, outputs close to float32, padding exact, and TorchScript refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from milsdk.contract import METADATA_KEY
from milsdk.errors import ArtifactError, ExportError
from milsdk.export.artifact import read_model_info
from milsdk.export.onnx import export_onnx, quantize_onnx
from milsdk.export.quantize import fold_transposed_weights
from milsdk.export.torchscript import export_torchscript
from milsdk.models import ABMIL, TransMIL

D = 48


def _run(proto_or_path, feeds):
    source = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_fold_transposed_weights_moves_the_transpose_into_the_initializer():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"]),
         helper.make_node("MatMul", ["x", "wt"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    before = _run(proto, {"x": x})
    assert fold_transposed_weights(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "MatMul"]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert list(inits) == ["wt"] and np.array_equal(inits["wt"], w.T)  # the unused original is removed
    after = _run(proto, {"x": x})
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert fold_transposed_weights(proto) == 0


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and those of its subgraphs, recursively."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes += _all_nodes(attr.g)
    return nodes


def test_a_node_after_the_scan_that_reads_its_producer_is_sorted_after_it():
    from milsdk.export.quantize import sort_topologically

    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "outer"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_out"])],
        "body", [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1]),
                 helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("y_out", TensorProto.FLOAT, [1])],
    )
    scan = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1)
    outer = helper.make_node("Neg", ["s0"], ["outer"])  # read only inside the body
    graph = helper.make_graph(
        [scan, outer], "g",
        [helper.make_tensor_value_info("s0", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, [3, 1])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, 1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(proto, full_check=True)
    sort_topologically(proto.graph)
    assert [n.op_type for n in proto.graph.node] == ["Neg", "Scan"]
    onnx.checker.check_model(proto, full_check=True)
    s, ys = _run(proto, {"s0": np.array([1.0], np.float32), "xs": np.zeros((3, 1), np.float32)})
    assert s[0] == -2.0 and ys[:, 0].tolist() == [0.0, -1.0, -2.0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (model, float32 path, int8 path)} for ABMIL (int8 by ``export_onnx(precision="int8")``) and a small
    TransMIL (int8 by ``quantize_onnx`` of its float32 file: tracing it again would take ~20 s)."""
    folder = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    out = {}
    abmil = ABMIL(in_shape=(D,), att_dim=16).eval()
    out["ABMIL"] = (abmil, export_onnx(abmil, folder / "ABMIL.onnx"),
                    export_onnx(abmil, folder / "ABMIL_int8.onnx", precision="int8"))
    transmil = TransMIL(in_shape=(D,), att_dim=32, n_heads=2, n_landmarks=8).eval()
    fp32 = export_onnx(transmil, folder / "TransMIL.onnx")
    out["TransMIL"] = (transmil, fp32, quantize_onnx(fp32, folder / "TransMIL_int8.onnx"))
    return out


def test_quantizing_the_float32_file_writes_the_int8_export_byte_for_byte(exported, tmp_path):
    _, fp32_path, int8_path = exported["ABMIL"]
    again = quantize_onnx(fp32_path, tmp_path / "again.onnx")
    assert again.read_bytes() == int8_path.read_bytes()
    assert read_model_info(fp32_path).extra["export"]["precision"] == "float32"  # the source is left as it was


def test_quantize_onnx_refuses_what_is_not_a_float32_export_in_one_line(exported, tmp_path):
    abmil, fp32_path, int8_path = exported["ABMIL"]
    fp16_path = export_onnx(abmil, tmp_path / "fp16.onnx", precision="float16")
    for source, words in ((int8_path, "precision int8 and float32 features"),
                          (fp16_path, "precision float16 and float32 features")):
        with pytest.raises(ExportError, match="only a float32 export with float32 features") as info:
            quantize_onnx(source, tmp_path / "out.onnx")
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ExportError, match="needs a path other than its float32 source"):
        quantize_onnx(fp32_path, fp32_path)
    not_milsdk = tmp_path / "plain.onnx"
    plain = onnx.load(fp32_path)
    del plain.metadata_props[:]
    onnx.save(plain, not_milsdk)
    with pytest.raises(ArtifactError):
        quantize_onnx(not_milsdk, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("name", ["ABMIL", "TransMIL"])
def test_every_product_with_a_constant_weight_is_int8(name, exported):
    model, _, int8_path = exported[name]
    proto = onnx.load(int8_path)
    inits = {i.name for i in proto.graph.initializer}
    nodes = _all_nodes(proto.graph)  # Scan bodies included (TransMIL's chunked attention)
    inits |= {i.name for n in nodes for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
              for i in a.g.initializer}
    float_weight_products = [n.name for n in nodes
                             if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    assert float_weight_products == []
    n_int8 = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in nodes)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert n_int8 >= n_linear - 1  # the classifier of a binary model may be folded into one product with others
    initializers = list(proto.graph.initializer)
    initializers += [i for n in nodes for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                     for i in a.g.initializer]
    assert sum(i.data_type == TensorProto.UINT8 for i in initializers) >= n_int8  # weights and zero points
    weights = [i for i in initializers if i.name.endswith("_quantized")]
    # uint8 weights (u8 x u8 products): onnxruntime's u8 x s8 kernel on a CPU without VNNI sums pairs of products in
    # a saturating int16 (a probability moved by 0.3 on the demo's model there); u8 x u8 is exact on every CPU
    assert all(w.data_type == TensorProto.UINT8 for w in weights)
    assert not [i.name for i in initializers if i.data_type == TensorProto.INT8]
    assert onnx.load(int8_path).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 I/O
    info = read_model_info(int8_path)
    assert info.model_name == name and info.extra["export"]["precision"] == "int8"
    assert any(p.key == METADATA_KEY for p in proto.metadata_props)


def test_int8_weights_for_vnni_cpus_are_int8_and_right_where_vnni_is(exported, tmp_path, caplog):
    """``int8_weights="int8"`` (the cpu-int8-vnni profile): int8 weights, recorded in the metadata. On a CPU with
    VNNI / AMX its outputs are as close to float32 as uint8 weights'; on one without, onnxruntime's kernel
    saturates and milsdk's backend says so when it loads the file (either way this CPU checks one of them)."""
    from milsdk.serving.backends.onnxruntime import OnnxRuntimeBackend
    from milsdk.utils.cpu import int8_sums_saturate

    _, fp32_path, _ = exported["ABMIL"]
    path = quantize_onnx(fp32_path, tmp_path / "vnni.onnx", int8_weights="int8")
    proto = onnx.load(path)
    weights = [i for i in proto.graph.initializer if i.name.endswith("_quantized")]
    assert weights and all(w.data_type == TensorProto.INT8 for w in weights)
    assert read_model_info(path).extra["export"]["int8_weights"] == "int8"
    caplog.clear()
    OnnxRuntimeBackend(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if int8_sums_saturate():
        assert len(warnings) == 1 and "--profile cpu-int8" in warnings[0]
    else:
        assert warnings == []
        x = np.random.default_rng(1).standard_normal((1, 300, D)).astype(np.float32)
        feeds = {"features": x, "mask": np.ones((1, 300), dtype=bool)}
        (ref_logits, ref_att), (logits, att) = _run(fp32_path, feeds), _run(path, feeds)
        assert np.abs(logits - ref_logits).max() <= 5e-2 * (1 + np.abs(ref_logits).max())
        assert np.abs(att - ref_att).max() <= 5e-3
    with pytest.raises(ExportError, match="int8 weights 'int4'"):
        quantize_onnx(fp32_path, tmp_path / "bad.onnx", int8_weights="int4")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("name", ["ABMIL", "TransMIL"])
def test_int8_outputs_are_close_to_float32_and_padding_is_exact(name, exported):
    _, fp32_path, int8_path = exported[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 300, D)).astype(np.float32)
    mask = np.ones((1, 300), dtype=bool)
    ref_logits, ref_att = _run(fp32_path, {"features": x, "mask": mask})
    logits, att = _run(int8_path, {"features": x, "mask": mask})
    assert np.abs(logits - ref_logits).max() <= 5e-2 * (1 + np.abs(ref_logits).max())
    assert np.abs(att - ref_att).max() <= 5e-3 and abs(att.sum() - 1) <= 1e-5
    assert not np.array_equal(logits, ref_logits)  # it is not the float32 graph
    # zero padding never changes an activation tensor's scale: the padded bag equals the bag alone. TransMIL's
    # chunked attention quantises each chunk with its own scale, and padding moves the chunk boundaries: there
    # the bag moves by about a quantisation step, as it does with the other bags of a batch
    padded = np.concatenate([x, np.zeros((1, 200, D), np.float32)], axis=1)
    pad_mask = np.concatenate([mask, np.zeros((1, 200), bool)], axis=1)
    p_logits, p_att = _run(int8_path, {"features": padded, "mask": pad_mask})
    if name == "ABMIL":
        assert np.abs(p_logits - logits).max() <= 1e-5 and np.abs(p_att[:, :300] - att).max() <= 1e-6
    else:
        assert np.abs(p_logits - ref_logits).max() <= 5e-2 * (1 + np.abs(ref_logits).max())
        assert np.abs(p_att[:, :300] - ref_att).max() <= 5e-3
    assert np.all(p_att[:, 300:] == 0)


def test_int8_weights_need_precision_int8(tmp_path):
    with pytest.raises(ExportError, match="'int8' only with precision int8 \\(got float32\\)"):
        export_onnx(ABMIL(in_shape=(D,)).eval(), tmp_path / "m.onnx", int8_weights="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_torchscript_int8_is_refused_in_one_line(tmp_path):
    with pytest.raises(ExportError, match="precision int8 is an ONNX export") as info:
        export_torchscript(ABMIL(in_shape=(D,)).eval(), tmp_path / "m.pt", precision="int8")
    assert "\n" not in str(info.value) and not (tmp_path / "m.pt").exists()
