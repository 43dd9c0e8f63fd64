"""ONNX-ML tree ensembles (``TreeEnsembleClassifier`` / ``TreeEnsembleRegressor``) rewritten as
plain tensor ops that onnx2tf and TFLite's builtin kernels understand.

The rewrite is the "GEMM" form of a decision forest: every internal node of every tree becomes
one column of a feature-selection matrix ``A`` and one threshold in ``B``, so that
``T = (x @ A <= B)`` holds every node's decision at once; a leaf is reached exactly when its
path's decisions all agree, which ``relu(T @ C - depth_true + 1)`` turns into a one-hot leaf row
(``C`` is +1 where the leaf lies under a node's true branch, -1 under its false branch); the
leaf rows times the leaf weights ``E`` plus the base values are the ensemble's scores. Exact in
float32; the matrices grow with nodes x leaves, so very large forests are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_MATRIX_ENTRIES = 16_000_000
"""nodes x leaves of the whole forest: 64 MB of float32 for the path matrix alone."""

_TRUE_WHEN_LEQ = {"BRANCH_LEQ": False, "BRANCH_LT": False, "BRANCH_GT": True, "BRANCH_GTE": True}
"""Per branch mode, whether the true/false children swap when the test is written as x <= t."""


class TreeLoweringError(ValueError):
    """The ensemble uses something the rewrite does not express (named in the message)."""


@dataclass
class Forest:
    features: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    paths: list[dict[int, int]] = field(default_factory=list)
    """Per leaf: internal-node column -> +1 (true branch taken) or -1 (false branch)."""
    leaf_keys: list[tuple[int, int]] = field(default_factory=list)
    trees: int = 0


def lower_tree_ensemble(
    node: Any,
    attrs: dict[str, Any],
    n_features: int,
    add: Callable[[str, list[str], dict[str, Any]], str],
    const: Callable[[npt.NDArray[Any]], str],
) -> str:
    """Emit the rewrite for ``node`` (its first input ``node.input[0]``) through ``add`` (op type,
    inputs, attributes -> output name) and ``const`` (array -> initializer name); return the name
    of the float scores tensor (N, K) as the original op's score output computes it."""
    forest = _forest(attrs)
    inner, leaves = len(forest.features), len(forest.leaf_keys)
    if inner * leaves > MAX_MATRIX_ENTRIES:
        raise TreeLoweringError(
            f"{node.op_type} with {forest.trees} trees, {inner} split nodes and {leaves} leaves is too large "
            f"to rewrite for TFLite (nodes x leaves over {MAX_MATRIX_ENTRIES:,}); "
            "train fewer or shallower trees"
        )
    weights, outputs, binary = _leaf_weights(node, attrs, forest)
    width = weights.shape[1]
    base = np.asarray(attrs.get("base_values") or [0.0] * width, np.float32)
    if base.size not in (width, outputs) and base.size != 0:
        raise TreeLoweringError(f"{node.op_type}: {base.size} base values for {width} outputs")

    select, thresholds, paths, depth_true = _matrices(node, forest, n_features)
    chosen = add("MatMul", [node.input[0], const(select)], {})
    decisions = add("Cast", [add("LessOrEqual", [chosen, const(thresholds)], {})], {"to": 1})
    agreement = add("MatMul", [decisions, const(paths)], {})
    reached = add("Relu", [add("Sub", [agreement, const(depth_true - 1.0)], {})], {})
    scores = add("MatMul", [reached, const(weights)], {})
    if base.size == width and np.any(base != 0):
        scores = add("Add", [scores, const(base)], {})
    if binary:
        # onnxruntime's binary case: one score s becomes [1 - s, s] when every weight is a
        # probability share (random forest), [-s, s] otherwise (a logit: gradient boosting).
        positive = bool(np.all(weights >= 0))
        first = (
            add("Sub", [const(np.ones(1, np.float32)), scores], {}) if positive else add("Neg", [scores], {})
        )
        scores = add("Concat", [first, scores], {"axis": 1})
        if base.size == outputs and np.any(base != 0):
            scores = add("Add", [scores, const(base)], {})
    return scores


def _leaf_weights(
    node: Any, attrs: dict[str, Any], forest: Forest
) -> tuple[npt.NDArray[np.float32], int, bool]:
    """Per leaf, its contribution to each output; the output count; whether it is onnxruntime's
    binary case (two classes, one score column)."""
    classifier = node.op_type == "TreeEnsembleClassifier"
    prefix = "class_" if classifier else "target_"
    leaf_index = {key: i for i, key in enumerate(forest.leaf_keys)}
    ids = [int(v) for v in attrs[prefix + "ids"]]
    if classifier:
        labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or []
        outputs = len(labels)
    else:
        outputs = int(attrs.get("n_targets", max(ids, default=0) + 1))
    binary = classifier and outputs == 2 and all(i == 0 for i in ids)
    weights = np.zeros((max(len(forest.leaf_keys), 1), 1 if binary else outputs), np.float32)
    for tree, leaf, target, weight in zip(
        attrs[prefix + "treeids"], attrs[prefix + "nodeids"], ids, attrs[prefix + "weights"], strict=True
    ):
        key = (int(tree), int(leaf))
        if key not in leaf_index:
            raise TreeLoweringError(f"{node.op_type}: a weight names node {key}, which is not a leaf")
        weights[leaf_index[key], int(target)] += float(weight)
    aggregate = str(attrs.get("aggregate_function", "SUM"))
    if aggregate == "AVERAGE":
        weights /= max(forest.trees, 1)
    elif aggregate != "SUM":
        raise TreeLoweringError(
            f"{node.op_type} aggregate_function {aggregate} is not supported (SUM, AVERAGE)"
        )
    return weights, outputs, binary


def _matrices(node: Any, forest: Forest, n_features: int) -> tuple[npt.NDArray[np.float32], ...]:
    """Feature selection (F, I), thresholds (I), leaf paths (I, L), true-branch depth (L)."""
    inner, leaves = max(len(forest.features), 1), max(len(forest.leaf_keys), 1)
    select = np.zeros((n_features, inner), np.float32)
    for column, feature in enumerate(forest.features):
        if feature >= n_features:
            raise TreeLoweringError(f"{node.op_type} splits on feature {feature} of {n_features}")
        select[feature, column] = 1.0
    thresholds = np.asarray(forest.thresholds or [0.0], np.float32)
    paths = np.zeros((inner, leaves), np.float32)
    depth_true = np.zeros(leaves, np.float32)
    for leaf, path in enumerate(forest.paths):
        for column, sign in path.items():
            paths[column, leaf] = sign
        depth_true[leaf] = sum(1 for sign in path.values() if sign > 0)
    return select, thresholds, paths, depth_true


def _forest(attrs: dict[str, Any]) -> Forest:
    tree_ids = [int(v) for v in attrs["nodes_treeids"]]
    node_ids = [int(v) for v in attrs["nodes_nodeids"]]
    modes = [v.decode() if isinstance(v, bytes) else str(v) for v in attrs["nodes_modes"]]
    features = [int(v) for v in attrs["nodes_featureids"]]
    values = [float(v) for v in attrs["nodes_values"]]
    true_ids = [int(v) for v in attrs["nodes_truenodeids"]]
    false_ids = [int(v) for v in attrs["nodes_falsenodeids"]]
    rows = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids, strict=True))}
    forest = Forest(trees=len(set(tree_ids)))
    for tree in sorted(set(tree_ids)):
        children = {n for t, n, m, tr, fa in zip(tree_ids, node_ids, modes, true_ids, false_ids, strict=True)
                    if t == tree and m != "LEAF" for n in (tr, fa)}  # fmt: skip
        roots = [n for t, n in zip(tree_ids, node_ids, strict=True) if t == tree and n not in children]
        if len(roots) != 1:
            raise TreeLoweringError(f"tree {tree} has {len(roots)} roots")
        stack: list[tuple[int, dict[int, int]]] = [(roots[0], {})]
        while stack:
            node, path = stack.pop()
            row = rows[(tree, node)]
            mode = modes[row]
            if mode == "LEAF":
                forest.leaf_keys.append((tree, node))
                forest.paths.append(path)
                continue
            if mode not in _TRUE_WHEN_LEQ:
                raise TreeLoweringError(f"tree split mode {mode} is not supported (LEQ, LT, GT, GTE)")
            threshold = np.float32(values[row])
            if mode in ("BRANCH_LT", "BRANCH_GTE"):  # x < t is x <= the float32 just below t
                threshold = np.nextafter(threshold, np.float32(-np.inf))
            column = len(forest.features)
            forest.features.append(features[row])
            forest.thresholds.append(float(threshold))
            leq, other = (
                (false_ids[row], true_ids[row]) if _TRUE_WHEN_LEQ[mode] else (true_ids[row], false_ids[row])
            )
            stack.append((leq, {**path, column: 1}))
            stack.append((other, {**path, column: -1}))
    return forest
