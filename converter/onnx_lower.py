"""An ONNX graph made ready for onnx2tf: one float output kept, the ONNX-ML ops that scikit-learn
exporters write (``Scaler``, ``LinearClassifier``, ``LinearRegressor``, ``Normalizer``,
``OneHotEncoder``, ``ArrayFeatureExtractor`` with constant indices, tree ensembles) rewritten as
plain ops, and the result checked against the original in onnxruntime before TensorFlow sees it.

onnx2tf reads only the default ONNX domain; without this rewrite every scikit-learn export
fails there with "No module named onnx2tf.ops.Scaler". Imports ``onnx`` (the converter-onnx
extra) and runs in the worker only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from converter.onnx_trees import TreeLoweringError, lower_tree_ensemble

ML_DOMAIN = "ai.onnx.ml"
LOWERED = (
    "Scaler", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
    "ArrayFeatureExtractor", "TreeEnsembleClassifier", "TreeEnsembleRegressor",
)  # fmt: skip
_FLOAT = 1


class LoweringError(ValueError):
    """An op or graph shape the rewrite cannot express; the message names the op."""


def lower(model: Any) -> Any:
    """A copy of ``model`` with one float output and no ONNX-ML ops; raise ``LoweringError``."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    floats = [o for o in graph.output if o.type.tensor_type.elem_type == _FLOAT]
    if not floats:
        raise LoweringError("the ONNX model has no float output (TFLite models here return float tensors)")
    kept = floats[0]
    del graph.output[:]
    graph.output.append(kept)
    _prune(graph)
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}  # fmt: skip
    initializers.update(constants)
    shapes = {v.name: _shape(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    new_nodes: list[Any] = []
    counter = [0]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"lowered_{stem}_{counter[0]}"

    def const(array: npt.NDArray[Any]) -> str:
        name = fresh("const")
        graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(op: str, inputs: list[str], attrs: dict[str, Any], output: str | None = None) -> str:
        out = output or fresh(op.lower())
        new_nodes.append(helper.make_node(op, inputs, [out], name=fresh(op), **attrs))
        return out

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") and node.domain != ML_DOMAIN:
            raise LoweringError(f"op {node.domain}.{node.op_type} ({node.name}) is outside the ONNX standard")
        if node.domain != ML_DOMAIN:
            new_nodes.append(node)
            continue
        if node.op_type not in LOWERED:
            raise LoweringError(
                f"ONNX-ML op {node.op_type} ({node.name or 'unnamed'}) has no TFLite rewrite; "
                f"supported ONNX-ML ops: {', '.join(LOWERED)}"
            )
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        try:
            result = _lower_node(node, attrs, shapes, initializers, (add, const, opset))
        except TreeLoweringError as exc:
            raise LoweringError(str(exc)) from exc
        # the op's other outputs (class labels) were pruned unless something reads them
        add("Identity", [result], {}, output=node.output[-1] if len(node.output) > 1 else node.output[0])
        if len(node.output) > 1 and _used(graph, node.output[0]):
            raise LoweringError(
                f"{node.op_type} ({node.name}): its label output is used; only scores convert"
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    _prune(graph)
    standard = [o for o in model.opset_import if o.domain != ML_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(standard or [helper.make_opsetid("", 17)])
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _lower_node(
    node: Any,
    attrs: dict[str, Any],
    shapes: dict[str, list[int | None]],
    initializers: dict[str, npt.NDArray[Any]],
    emit: tuple[Any, Any, int],
) -> str:
    add, const, opset = emit
    source = node.input[0]
    if node.op_type == "Scaler":
        offset = np.asarray(attrs.get("offset", [0.0]), np.float32)
        scale = np.asarray(attrs.get("scale", [1.0]), np.float32)
        return str(add("Mul", [add("Sub", [source, const(offset)], {}), const(scale)], {}))
    if node.op_type == "Normalizer":
        norm = attrs.get("norm", b"MAX")
        norm = norm.decode() if isinstance(norm, bytes) else str(norm)
        reduce = {"L1": "ReduceL1", "L2": "ReduceL2", "MAX": "ReduceMax"}[norm]
        absolute = add("Abs", [source], {}) if norm == "MAX" else source
        if opset >= 18:  # axes became an input in opset 18
            total = add(reduce, [absolute, const(np.asarray([-1], np.int64))], {"keepdims": 1})
        else:
            total = add(reduce, [absolute], {"axes": [-1], "keepdims": 1})
        return str(add("Div", [source, total], {}))
    if node.op_type == "ArrayFeatureExtractor":
        if node.input[1] not in initializers:
            raise LoweringError(f"ArrayFeatureExtractor ({node.name}) with computed indices")
        indices = np.asarray(initializers[node.input[1]], np.int64).reshape(-1)
        return str(add("Gather", [source, const(indices)], {"axis": -1}))
    if node.op_type == "OneHotEncoder":
        categories = attrs.get("cats_int64s")
        if categories is None:
            raise LoweringError(
                f"OneHotEncoder ({node.name}) on string categories: TFLite inputs are numbers"
            )
        as_float = add("Cast", [source], {"to": _FLOAT})
        expanded = add("Unsqueeze", [as_float, const(np.asarray([-1], np.int64))], {})
        hits = add("Equal", [expanded, const(np.asarray(categories, np.float32))], {})
        return str(add("Cast", [hits], {"to": _FLOAT}))
    if node.op_type in ("LinearClassifier", "LinearRegressor"):
        rows = len(attrs.get("intercepts") or []) or int(attrs.get("targets", 1))
        coefficients = np.asarray(attrs["coefficients"], np.float32).reshape(rows, -1)
        intercepts = np.asarray(attrs.get("intercepts") or [0.0] * len(coefficients), np.float32)
        scores = add(
            "Add", [add("MatMul", [source, const(coefficients.T.copy())], {}), const(intercepts)], {}
        )
        labels = attrs.get("classlabels_ints") or attrs.get("classlabels_strings") or []
        if node.op_type == "LinearClassifier" and len(coefficients) == 1 and len(labels) == 2:
            scores = add("Concat", [add("Neg", [scores], {}), scores], {"axis": 1})
        return _post_transform(node, attrs, str(scores), add)
    shape = shapes.get(source)
    n_features = shape[-1] if shape and shape[-1] is not None else max(attrs["nodes_featureids"]) + 1
    tree_scores = lower_tree_ensemble(node, attrs, int(n_features), add, const)
    return _post_transform(node, attrs, tree_scores, add)


def _post_transform(node: Any, attrs: dict[str, Any], scores: str, add: Any) -> str:
    transform = attrs.get("post_transform", b"NONE")
    transform = transform.decode() if isinstance(transform, bytes) else str(transform)
    if transform == "NONE":
        return scores
    if transform == "LOGISTIC":
        return str(add("Sigmoid", [scores], {}))
    if transform == "SOFTMAX":
        return str(add("Softmax", [scores], {"axis": -1}))
    raise LoweringError(f"{node.op_type} ({node.name}) post_transform {transform} is not supported")


def _shape(value: Any) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in dims]


def _used(graph: Any, name: str) -> bool:
    return any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)


def _prune(graph: Any) -> None:
    """Drop the nodes and initializers no kept output depends on."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [i for i in graph.initializer if i.name not in needed]
    for initializer in unused:
        graph.initializer.remove(initializer)


def check_same(original: Any, lowered: Any, x: npt.NDArray[np.float32]) -> float:
    """Largest difference between the two graphs' kept output on ``x`` (onnxruntime, float32)."""
    expected = run_onnx(original, x, lowered.graph.output[0].name)
    got = run_onnx(lowered, x, lowered.graph.output[0].name)
    return float(np.max(np.abs(expected - got))) if expected.size else 0.0


def run_onnx(model: Any, x: npt.NDArray[np.float32], output: str | None = None) -> npt.NDArray[np.float32]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = output or next(o.name for o in session.get_outputs())
    feed = session.get_inputs()[0].name
    return np.asarray(session.run([name], {feed: x})[0], np.float32)
