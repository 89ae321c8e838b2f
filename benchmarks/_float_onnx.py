"""The digits recipes' float models as ONNX (for EZKL's default pipeline and onnxruntime)."""

from __future__ import annotations

import numpy as np


def float_onnx(layers, params, input_shape, batch: int | str = 1) -> bytes:
    """The float model as ONNX (NHWC input like the program; NCHW inside for Conv/pools).

    ``batch`` is the batch dimension: a number, or a name for a variable batch.
    """
    from onnx import TensorProto, helper, numpy_helper

    from aivm_jax.quant import AvgPool, Conv, Dense, Flatten, MaxPool

    nodes, inits, cur, nchw = [], [], "x", False

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(kind, inputs, out, **attrs):
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    for i, layer in enumerate(layers):
        p = params.get(f"layer_{i}", {})
        if isinstance(layer, (Conv, MaxPool, AvgPool)) and not nchw:
            cur, nchw = op("Transpose", [cur], f"t{i}", perm=[0, 3, 1, 2]), True
        if isinstance(layer, (Dense, Flatten)) and nchw:
            cur, nchw = op("Transpose", [cur], f"u{i}", perm=[0, 2, 3, 1]), False
        if isinstance(layer, Dense):
            cur = op(
                "Add",
                [op("MatMul", [cur, const(f"w{i}", p["kernel"])], f"mm{i}"), const(f"b{i}", p["bias"])],
                f"d{i}",
            )
        elif isinstance(layer, Conv):
            (t, b), (left, r) = layer.padding
            w = np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1))
            cur = op(
                "Conv",
                [cur, const(f"w{i}", w), const(f"b{i}", p["bias"])],
                f"c{i}",
                kernel_shape=list(layer.kernel),
                strides=list(layer.strides),
                pads=[t, left, b, r],
                dilations=[1, 1],
            )
        elif isinstance(layer, MaxPool):
            cur = op("MaxPool", [cur], f"m{i}", kernel_shape=list(layer.window), strides=list(layer.strides))
        elif isinstance(layer, AvgPool):
            cur = op(
                "AveragePool", [cur], f"a{i}", kernel_shape=list(layer.window), strides=list(layer.strides)
            )
        elif isinstance(layer, Flatten):
            cur = op("Reshape", [cur, _shape(inits, f"s{i}", batch)], f"f{i}")
        if getattr(layer, "relu", False):
            cur = op("Relu", [cur], f"r{i}")
    graph = helper.make_graph(
        nodes,
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _shape(inits, name, batch):
    from onnx import numpy_helper

    first = batch if isinstance(batch, int) else 0  # Reshape's 0 keeps the input's batch size
    inits.append(numpy_helper.from_array(np.array([first, -1], np.int64), name))
    return name
