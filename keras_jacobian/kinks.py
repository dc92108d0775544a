"""Kinks in a trained network, where difference estimators train wrongly.

A difference estimator computes `J v` as `(F(x + eps v) - F(x)) / eps`.
Its value is right on any network, but training differentiates it with
respect to the weights: `(g(x + eps v) - g(x)) / eps`, with `g` the
gradient of the output with respect to the weights. Where the network's
derivative jumps (a ReLU switching, a max-pooling window changing its
winner), `g` jumps by a finite amount between the two passes, and the
quotient is of order `1 / eps` for every unit that switches between the
two passes. On a VGG-4 with ReLU and max pooling, the weight gradient of
`"forward_difference"` has cosine -0.008 with that of forward mode, and
86 times its norm of error
(`benchmarks/estimator_gradients.py`), though the loss agrees to 2e-4.

The derivative of the difference is the derivative of `J v` only when the
network's derivative is continuous. Which operations a network runs is
read from the graph of its training-mode pass (custom layers and nested
models included), not from layer classes.
"""

import tensorflow as tf

from keras_jacobian import batch_statistics
from keras_jacobian import probes

# Operations whose derivative jumps: ReLU and its variants (hard swish
# and hard sigmoid are built on Relu6), max pooling, absolute values,
# elementwise maxima and minima (a maximum of two smooth functions has a
# kink where they cross).
KINK_OPS = frozenset(
    {
        "Relu",
        "Relu6",
        "LeakyRelu",
        "MaxPool",
        "MaxPoolV2",
        "MaxPool3D",
        "Abs",
        "Maximum",
        "Minimum",
        "ClipByValue",
        # Reductions and selections by value (global max pooling, top-k,
        # sorting, gathering by argmax) and comparisons of the values
        # (`where(x > 0, ...)`, `x * (x > 0)`, thresholds): the
        # derivative jumps where the comparison flips.
        "Max",
        "Min",
        "ArgMax",
        "ArgMin",
        "TopKV2",
        "Greater",
        "GreaterEqual",
        "Less",
        "LessEqual",
        "Sign",
        "Floor",
        "Ceil",
        "Round",
        "Rint",
        "FloorMod",
        "FloorDiv",
    }
)
# Their outputs do not depend on the input's values (a dropout mask
# drawn in the input's shape is not a kink of the network).
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
# Names a user recognises, for messages.
_PLAIN = {
    "Relu": "ReLU",
    "Relu6": "ReLU6 (also hard swish, hard sigmoid)",
    "LeakyRelu": "leaky ReLU",
    "MaxPool": "max pooling",
    "MaxPoolV2": "max pooling",
    "MaxPool3D": "max pooling",
    "Abs": "abs",
    "Maximum": "maximum",
    "Minimum": "minimum",
    "ClipByValue": "clip",
    "Max": "max over values (e.g. global max pooling)",
    "Min": "min over values",
    "ArgMax": "argmax",
    "ArgMin": "argmin",
    "TopKV2": "top-k or sorting",
    "Greater": "comparison of values",
    "GreaterEqual": "comparison of values",
    "Less": "comparison of values",
    "LessEqual": "comparison of values",
    "Sign": "sign",
    "Floor": "rounding",
    "Ceil": "rounding",
    "Round": "rounding",
    "Rint": "rounding",
    "FloorMod": "modulo",
    "FloorDiv": "integer division",
}


def graph_ops(model, input_shape, dtype, training):
    """The operation types of one pass of `model`, nested functions
    included.

    Args:
        model: a Keras model with one input.
        input_shape: its input shape without the batch axis (`None` axes
            allowed).
        dtype: its input dtype.
        training: the mode of the pass.

    Returns:
        A set of operation type names (e.g. `"Relu"`, `"MatMul"`).
    """
    return {
        node.op for node in graph_nodes(model, input_shape, dtype, training)
    }


def graph_nodes(model, input_shape, dtype, training):
    """The operations (`NodeDef`s, with their attributes) of one pass of
    `model` that depend on its input, nested functions included."""
    shape = probes.probe_shape(model, tuple(input_shape), "model")
    spec = tf.TensorSpec((None,) + tuple(shape), dtype)

    @tf.function(autograph=False)
    def forward(x):
        return model(x, training=training)

    # The extra passes reuse the step's BatchNorm statistics: what
    # computes them is not on their input path.
    with batch_statistics.detached():
        function = forward.get_concrete_function(spec)
    # The batch's placeholder (captured variables and seeds come after).
    start = function.inputs[0].op.name
    graph = function.graph.as_graph_def()
    consumers = {}
    for node in graph.node:
        for name in node.input:
            source = name.lstrip("^").split(":")[0]
            consumers.setdefault(source, []).append(node)
    # Only what depends on the input: a maximum of a variance and an
    # epsilon (in normalization layers) is no kink of the network.
    todo = [node for node in graph.node if node.name == start]
    seen = {node.name for node in todo}
    nodes = []
    functions = {f.signature.name: f for f in graph.library.function}
    while todo:
        node = todo.pop()
        nodes.append(node)
        for attr in node.attr.values():
            if attr.func.name in functions:
                nodes += _function_nodes(functions, attr.func.name)
        if node.op in _SHAPE_OPS:
            continue
        for consumer in consumers.get(node.name, ()):
            if consumer.name not in seen:
                seen.add(consumer.name)
                todo.append(consumer)
    return nodes


def _function_nodes(functions, name, seen=None):
    """Every operation of a library function, nested ones included (a
    function the input reaches is taken whole)."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    nodes = []
    for node in functions[name].node_def:
        nodes.append(node)
        for attr in node.attr.values():
            if attr.func.name in functions:
                nodes += _function_nodes(functions, attr.func.name, seen)
    return nodes


def check_smooth(model, input_shape, dtype, role, estimator):
    """Refuses a difference estimator on a network with kinks.

    Args:
        model: the network whose weights the difference trains.
        input_shape: its input shape without the batch axis.
        dtype: its input dtype.
        role: `"student"` or `"model"`, for messages.
        estimator: the estimator's name.

    Raises:
        ValueError: when a training-mode pass runs an operation of
            `KINK_OPS`.
    """
    found = sorted(graph_ops(model, input_shape, dtype, True) & KINK_OPS)
    if not found:
        return
    names = sorted({_PLAIN[op] for op in found})
    # The Distiller passes its endpoint model: name the user's network.
    name = model.name.removesuffix("_endpoints")
    raise ValueError(
        f"estimator={estimator!r} trains the {role} through the difference "
        f"of two forward passes, but the {role} {name!r} has kinks "
        f"({', '.join(names)}; operations {found}): where its derivative "
        "jumps between the two passes, the weight gradient of the "
        "difference is of order 1/step, not the derivative of J v (the "
        "loss value stays right, the training does not: measured gradient "
        "cosine -0.008 against forward mode on a ReLU and max-pooling "
        "VGG-4). Use estimator='vjp' (the default of target='all') or "
        "'jvp': exact autodiff, the same objective. The difference "
        "estimators suit networks with continuous derivatives (tanh, "
        "sigmoid, GELU, swish, softplus, average pooling)."
    )
