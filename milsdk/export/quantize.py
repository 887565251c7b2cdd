"""int8 dynamic quantisation of an exported float32 ONNX graph (the ``int8`` export precision).

Weights of every matrix product with a constant right-hand side (the Linear layers: an attention MIL model's
first layer, the transformer's qkv / output projections, the classifier) become 8-bit, per output channel; the
activations are quantised on the fly, per tensor, to uint8 (``DynamicQuantizeLinear`` -> ``MatMulInteger``,
which onnxruntime fuses into ``DynamicQuantizeMatMul``). Products of two activations (attention scores, the
Nystrom pieces, the attention-weighted sum of the features) and everything else (softmaxes, norms) stay float32,
so the attention distribution keeps its float32 normalisation.

Why the weights are uint8 (u8 x u8 products), not int8: an artifact is quantised once and served on whatever CPU
runs it. onnxruntime's u8 x s8 kernel for a CPU with AVX2 only (AMD Zen 3, Intel before Ice Lake) adds two
products into a *saturating* int16 (``vpmaddubsw``; 2 x 255 x 127 overflows it), while its u8 x u8 kernel there
widens to 16 bits first and never saturates. Where VNNI is (AVX-512 VNNI, AVX-VNNI or AMX), the u8 x s8 kernel sums
in int32 (``vpdpbusd``) and is exact, and faster than u8 x u8: on a 2-core AMD Zen 5 with AVX-512 VNNI, ABMIL D =
1024 took 8.73 ms with int8 weights, 12.3 ms with uint8 weights and 14.55 ms in float32 at 16,000 instances (0.33 /
0.54 / 0.69 ms at 1,000), TransMIL 370 / 403 / 447 ms at 16,000; so uint8 weights keep about 40% of the time int8
weights save on a VNNI CPU (ABMIL: x1.18 instead of x1.67 at 16,000), to stay right on every CPU.
``weights="int8"`` (the ``cpu-int8-vnni`` profile) keeps all of it, for artifacts served only on CPUs with VNNI or
AMX. Measured on a Zen 3 (AVX2, no VNNI) against
eager float32, D = 1024, synthetic bags of 1 to 2,000 instances, max probability change / min attention Spearman:

    weights                   ABMIL             TransMIL         the demo's model, its 100 held-out bags
    int8, 8 bits              0.014  / 0.989    0.040 / 0.990    0.305 (2 labels of 100 changed)
    int8, 7 bits (-64..64)    0.0013 / 0.9986   0.0016 / 0.9997  0.021 (over the 0.02 limit)
    uint8, 8 bits (used)      0.0009 / 0.9979   0.0024 / 0.9993  0.004

On that CPU the u8 x u8 kernel is ~20% slower than the saturating one (ABMIL 16,000 x 1024: 43.1 against 38.1 ms,
float32 47.5 ms), the price of a right answer there.

Why the weights must be initializers first: the dynamo exporter keeps a ``Transpose`` between a weight and its
MatMul when the weight is used more than once (TransMIL's qkv), and onnxruntime's quantiser quantises only
MatMuls whose weight is an initializer; :func:`fold_transposed_weights` folds those transposes first
(measured on TransMIL D = 1024: 2 of its 4 largest projections were skipped otherwise).

The same holds inside Scan bodies (TransMIL's chunked attention projects q, k, v and its output per chunk, with
the outer graph's weights): subgraphs are quantised too, and the graph is re-sorted afterwards, since the
quantiser's own sort does not see what a body reads from the enclosing graph.

Padding stays exact: ``DynamicQuantizeLinear``'s range always includes 0, so the zeros of padded rows never change
a batch's scale. A bag's result can still move by about one quantisation step with the other bags of its batch
(the scale is per tensor); verification states the looser tolerances (:meth:`~milsdk.export.verify.Tolerances.
for_precision`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from milsdk.errors import ExportError, first_line

__all__ = ["INT8_WEIGHTS", "fold_transposed_weights", "quantize_int8", "sort_topologically"]

#: weight types of :func:`quantize_int8`: "uint8" (u8 x u8 products, right on every x86 CPU, the default) or
#: "int8" (u8 x s8: faster where the CPU has VNNI / AMX, saturating on a CPU with AVX2 only; module docstring)
INT8_WEIGHTS = ("uint8", "int8")


def fold_transposed_weights(proto: onnx.ModelProto) -> int:
    """Replace each ``Transpose`` of an initializer by the transposed initializer (in place).

    Returns:
        How many transposes were folded.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    kept, folded = [], 0
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            array = np.transpose(numpy_helper.to_array(inits[node.input[0]]), perm)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), node.output[0]))
            folded += 1
        else:
            kept.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        for init in [i for i in graph.initializer if i.name not in used]:
            graph.initializer.remove(init)
    return folded


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes so that every node comes after the producers of what it reads, including what its
    subgraphs (a Scan / Loop / If body) read from the enclosing graph (in place; the original order is kept
    wherever it is already valid)."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    done: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:
        stack = [(i, iter(sorted(_reads(graph.node[i]))))]
        done.add(i)
        while stack:
            j, pending = stack[-1]
            for name in pending:
                k = producer.get(name)
                if k is not None and k not in done:
                    done.add(k)
                    stack.append((k, iter(sorted(_reads(graph.node[k])))))
                    break
            else:
                stack.pop()
                order.append(j)

    for i in range(len(graph.node)):
        if i not in done:
            visit(i)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads: its inputs and what its subgraphs take from enclosing scopes."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            defined = {i.name for i in body.input} | {i.name for i in body.initializer}
            defined |= {name for n in body.node for name in n.output}
            names |= {name for n in body.node for name in _reads(n) if name not in defined}
    return names


def quantize_int8(proto: onnx.ModelProto, weights: str = "uint8") -> onnx.ModelProto:
    """The int8 dynamically quantised version of a float32 milsdk ONNX graph (metadata kept).

    Args:
        proto: the float32 graph (deployment signature; its inputs and outputs are unchanged).
        weights: "uint8" (right on every CPU) or "int8" (for serving on CPUs with VNNI / AMX only: faster there,
            wrong where only AVX2 is; :class:`~milsdk.serving.backends.OnnxRuntimeBackend` warns on such a CPU).

    Returns:
        A new ModelProto: 8-bit weights of that type per output channel for MatMul / Gemm with constant weights.

    Raises:
        ExportError: the quantiser failed, or ``weights`` is not one of :data:`INT8_WEIGHTS`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weights not in INT8_WEIGHTS:
        raise ExportError(f"int8 weights {weights!r}: expected one of {', '.join(INT8_WEIGHTS)}")

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    fold_transposed_weights(proto)
    metadata = [(p.key, p.value) for p in proto.metadata_props]
    with tempfile.TemporaryDirectory(prefix="milsdk-int8-") as folder:
        src, dst = Path(folder) / "float32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(proto, src)
        # the quantiser logs a warning on the root logger for every tensor it leaves float32, by design here
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                # uint8 weights: exact on every x86 CPU; int8 ones are faster where VNNI is (module docstring)
                src, dst, weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8, per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
                # products of two activations (attention, Nystrom) stay float32
                # the chunked attention's projections sit in Scan bodies (TransMIL: q, k, v and the output
                # projection); their weights are the outer graph's initializers
                extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True},
            )
        except Exception as exc:
            raise ExportError(f"int8 quantisation failed: {first_line(exc, with_type=True)}") from exc
        finally:
            root.setLevel(level)
        quantized = onnx.load_model(dst)
    # the quantiser re-sorts the graph without seeing what a Scan body reads from outside: sort again
    sort_topologically(quantized.graph)
    del quantized.metadata_props[:]
    for key, value in metadata:
        quantized.metadata_props.add(key=key, value=value)
    quantized.doc_string = proto.doc_string
    return quantized
