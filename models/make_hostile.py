"""Hostile ONNX models: small, valid protobuf, well-typed ONNX that make tract 0.23 panic while it
types or optimises the graph (an index out of range in a constant Gather, a Slice with step 0,
a Range of 2^50 elements). Drover must contain each panic (runtime/src/engine/guard.rs), refuse
the model with a clear error, and keep serving the model it had.

Found by generating odd-but-legal graphs and loading them with `drover-agent inspect`.
Run: python3 models/make_hostile.py   (writes models/hostile/*.onnx; needs onnx, numpy)
"""

import os

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile")


def save(name, nodes, inits, outputs=None):
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    y = outputs or [h.make_tensor_value_info("y", T.FLOAT, [1, "n"])]
    graph = h.make_graph(nodes, name, [x], y, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], producer_name="drover make_hostile.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name + ".onnx"))


def main():
    os.makedirs(OUT, exist_ok=True)
    # Gather from a constant with an index past its end: tract folds it and indexes out of bounds.
    save(
        "gather_out_of_range",
        [h.make_node("Gather", ["c", "i"], ["g"], axis=1), h.make_node("Add", ["x", "g"], ["y"])],
        [nh.from_array(np.ones((1, 4), np.float32), "c"), nh.from_array(np.array([0, 1, 2, 99], np.int64), "i")],
    )
    # Slice with a step of 0: a division by zero while typing.
    save(
        "slice_step_zero",
        [h.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
        [
            nh.from_array(np.array([0], np.int64), "starts"),
            nh.from_array(np.array([4], np.int64), "ends"),
            nh.from_array(np.array([1], np.int64), "axes"),
            nh.from_array(np.array([0], np.int64), "steps"),
        ],
    )
    # A constant Range of 2^50 elements: tract asks for 8 PB while folding it.
    save(
        "range_huge",
        [
            h.make_node("Range", ["a", "b", "d"], ["r"]),
            h.make_node("Cast", ["r"], ["rf"], to=T.FLOAT),
            h.make_node("ReduceSum", ["rf"], ["s"], keepdims=0),
            h.make_node("Add", ["x", "s"], ["y"]),
        ],
        [
            nh.from_array(np.array(0, np.int64), "a"),
            nh.from_array(np.array(1 << 50, np.int64), "b"),
            nh.from_array(np.array(1, np.int64), "d"),
        ],
    )


if __name__ == "__main__":
    main()
