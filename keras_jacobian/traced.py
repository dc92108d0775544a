"""What a network computes, read from the graph of one traced pass.

Layer classes and attributes do not say what a `Lambda` or a custom
layer computes: `Lambda(keras.ops.softmax)` makes probabilities of the
logits, `Lambda(lambda t: ops.cast(ops.cast(t, "float16"), "float32"))`
rounds every value to float16 inside a float32 model. The graph of a
traced pass does say it, custom layers and nested models included.
"""

import keras
import tensorflow as tf

from keras_jacobian import _compat
from keras_jacobian import jacobians
from keras_jacobian import probes
from keras_jacobian import validation

# Operations that pass their input's values on (possibly rearranged or
# cast): a softmax before them is still the output's softmax.
_PASS_THROUGH = frozenset(
    {
        "Identity",
        "IdentityN",
        "Snapshot",
        "StopGradient",
        "PreventGradient",
        "EnsureShape",
        "Cast",
        "Reshape",
        "Transpose",
        "Squeeze",
        "ExpandDims",
    }
)
_CALLS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
# Their outputs do not depend on the input's values.
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
_DIVISIONS = frozenset({"RealDiv", "Div", "DivNoNan"})


def trace(model, input_shape, dtype, training):
    """The graph of one pass of `model` on a batch placeholder.

    Args:
        model: a Keras model with one input and one output tensor.
        input_shape: its input shape without the batch axis (`None`
            axes allowed).
        dtype: its input dtype.
        training: the mode of the pass.

    Returns:
        `(graph_def, start, output)`: the `GraphDef`, the name of the
        batch's placeholder and the name of the output tensor.
    """
    shape = probes.probe_shape(model, tuple(input_shape), "model")
    spec = tf.TensorSpec((None,) + tuple(shape), dtype)

    # With AutoGraph, as `fit` traces it (Python control flow on tensors).
    @tf.function
    def forward(x):
        return model(x, training=training)

    function = forward.get_concrete_function(spec)
    # The batch's placeholder (captured variables and seeds come after).
    start = function.inputs[0].op.name
    return function.graph.as_graph_def(), start, function.outputs[0].name


def _reference(name):
    """`(node, index)` of a tensor name: `"a"`, `"a:1"` or, in a
    function body, `"a:output:1"`; `(None, None)` for a control input."""
    if name.startswith("^"):
        return None, None
    parts = name.split(":")
    index = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 0
    return parts[0], index


def _functions(graph_def):
    return {f.signature.name: f for f in graph_def.library.function}


def _producer(nodes, functions, name):
    """The node that computes the values of tensor `name`, past
    operations that only pass them on, or None (a function argument or
    an unknown tensor).

    Args:
        nodes: `{name: NodeDef}` of the graph or function body.
        functions: `{name: FunctionDef}` of the graph's library.
        name: the tensor's name in that graph.
    """
    while True:
        node_name, index = _reference(name)
        node = nodes.get(node_name)
        if node is None:
            return None
        if node.op in _CALLS and node.attr["f"].func.name in functions:
            body = functions[node.attr["f"].func.name]
            out = body.signature.output_arg[index].name
            inner = {n.name: n for n in body.node_def}
            found = _producer(inner, functions, body.ret[out])
            if found is not None:
                return found
            # The function returns one of its arguments as it is.
            arguments = [a.name for a in body.signature.input_arg]
            argument = _reference(body.ret[out])[0]
            if argument not in arguments:
                return None
            name = node.input[arguments.index(argument)]
            continue
        if node.op not in _PASS_THROUGH:
            return node
        inputs = [i for i in node.input if not i.startswith("^")]
        name = inputs[index if node.op == "IdentityN" else 0]


def final_softmax(model, input_shape, dtype):
    """The name of the operation that makes `model`'s output a softmax,
    or None.

    A softmax is a `Softmax` operation, or `exp(z) / sum(exp(z))`
    written out, as the last operation that changes values (reshapes,
    transposes and casts after it keep it a softmax). A softmax inside
    the network (attention) is no final softmax.
    """
    graph_def, _, output = trace(model, input_shape, dtype, False)
    nodes = {n.name: n for n in graph_def.node}
    functions = _functions(graph_def)

    def producer(name):
        return _producer(nodes, functions, name)

    def softmax(name):
        node = producer(name)
        if node is None:
            return None
        inputs = [i for i in node.input if not i.startswith("^")]
        if node.op == "Softmax":
            return node.name
        # Softmaxes stacked or concatenated (`TimeDistributed`).
        if node.op in ("Pack", "ConcatV2"):
            values = inputs[:-1] if node.op == "ConcatV2" else inputs
            found = [softmax(value) for value in values]
            return found[0] if found and all(found) else None
        if node.op in _DIVISIONS:
            numerator, denominator = inputs[:2]
        elif node.op == "Mul" and len(inputs) == 2:
            for numerator, other in (inputs, inputs[::-1]):
                inverse = producer(other)
                if inverse is not None and inverse.op in ("Reciprocal", "Inv"):
                    denominator = inverse.input[0]
                    break
            else:
                return None
        else:
            return None
        exp = producer(numerator)
        total = producer(denominator)
        if exp is None or total is None:
            return None
        if exp.op != "Exp" or total.op != "Sum":
            return None
        summed = producer(total.input[0])
        # `exp` may be computed twice, once for the numerator and once for
        # the sum: of the same values.
        if summed is None or summed.op != "Exp":
            return None
        if summed.name != exp.name and summed.input[0] != exp.input[0]:
            return None
        return node.name

    return softmax(output)


def computed_dtypes(model, input_shape, dtype, training):
    """The float dtypes of the values a pass computes from its input.

    Every operation the batch reaches (inside nested functions too) adds
    the float dtypes it is declared with: a cast to float16 inside a
    float32 model adds float16. Values that depend only on the input's
    shape (dropout masks) and on the weights are not read.

    Returns:
        A set of dtype names, e.g. `{"float32", "float16"}`.
    """
    return _input_path(model, input_shape, dtype, training)[0]


def _input_path(model, input_shape, dtype, training):
    """`(float dtypes, steps)` of the operations a pass runs on values
    computed from its input; `steps` names the roundings and casts to
    integers among them (the output is a step function there)."""
    graph_def, start, _ = trace(model, input_shape, dtype, training)
    consumers = {}
    for node in graph_def.node:
        for name in node.input:
            consumers.setdefault(_reference(name)[0], []).append(node)
    functions = _functions(graph_def)
    todo = [node for node in graph_def.node if node.name == start]
    seen = {node.name for node in todo}
    dtypes, steps = set(), set()
    while todo:
        node = todo.pop()
        dtypes.update(_float_dtypes(node))
        steps.update(_steps(node))
        for attr in node.attr.values():
            if attr.func.name in functions:
                found = _function_dtypes(functions, attr.func.name)
                dtypes.update(found[0])
                steps.update(found[1])
        if node.op in _SHAPE_OPS:
            continue
        for consumer in consumers.get(node.name, ()):
            if consumer.name not in seen:
                seen.add(consumer.name)
                todo.append(consumer)
    return dtypes, steps


# Operations whose output is a step function of their input.
_ROUNDING = frozenset(
    {"Round", "Rint", "Floor", "Ceil", "Sign", "FloorDiv", "FloorMod"}
)


def _steps(node):
    if node.op in _ROUNDING:
        return {node.op}
    if node.op == "Cast" and tf.as_dtype(node.attr["DstT"].type).is_integer:
        return {f"Cast to {tf.as_dtype(node.attr['DstT'].type).name}"}
    return set()


def _float_dtypes(node):
    found = set()
    for attr in node.attr.values():
        for enum in [attr.type] + list(attr.list.type):
            if not enum:
                continue
            try:
                dtype = tf.as_dtype(enum)
            except TypeError:
                continue
            if dtype.is_floating:
                found.add(dtype.name)
    return found


def _function_dtypes(functions, name, seen=None):
    """`(float dtypes, steps)` of every operation of a library function
    (a function the input reaches is taken whole)."""
    seen = set() if seen is None else seen
    if name in seen:
        return set(), set()
    seen.add(name)
    dtypes, steps = set(), set()
    for node in functions[name].node_def:
        dtypes.update(_float_dtypes(node))
        steps.update(_steps(node))
        for attr in node.attr.values():
            if attr.func.name in functions:
                found = _function_dtypes(functions, attr.func.name, seen)
                dtypes.update(found[0])
                steps.update(found[1])
    return dtypes, steps


# Keras layers and ops that pass their input's values on: a softmax in a
# `Lambda` before them is still the output's softmax.
_PASS_THROUGH_LAYERS = frozenset(
    {
        "Reshape",
        "Flatten",
        "Permute",
        "Identity",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "Transpose",
        "Squeeze",
        "ExpandDims",
        "Cast",
    }
)


def may_hide_softmax(tensor):
    """Whether the operations that compute `tensor` may hide a final
    softmax.

    False when the last operation that changes values is a Keras layer
    with no activation or one of `keras.activations` (a `Dense` of
    logits): softmax layers and activations are found by
    `validation.check_logits_output`. True for a `Lambda`, a custom
    layer, a wrapper, another activation (`tf.nn.softmax`,
    `keras.ops.softmax`), Keras ops on symbolic tensors (`exp(z) /
    sum(exp(z))`), a subclassed model or anything unknown: their graph
    must be read.
    """
    produced = _compat.producing_operation(tensor)
    if produced is None:
        return True
    operation, index = produced
    if isinstance(operation, keras.Model):
        try:
            outputs = operation.outputs
        except (AttributeError, ValueError):
            return True
        return not outputs or may_hide_softmax(outputs[index])
    if not _module(operation).startswith("keras."):
        return True
    activation = getattr(operation, "activation", None)
    name = type(operation).__name__
    if name in _PASS_THROUGH_LAYERS or (
        name == "Activation" and activation is keras.activations.linear
    ):
        calls = _compat.call_inputs(operation)
        if len(calls) != 1 or len(calls[0]) != 1:
            return True
        return may_hide_softmax(calls[0][0])
    if not isinstance(operation, keras.layers.Layer) or isinstance(
        operation, (keras.layers.Lambda, keras.layers.Wrapper)
    ):
        return True
    keras_activations = _module(keras.activations.linear)
    return activation is not None and _module(activation) != keras_activations


def _module(thing):
    return getattr(thing, "__module__", None) or ""


def check_logits(model, input_shape, dtype, role):
    """Raises when `model`'s traced output is a softmax.

    Finds what `validation.check_logits_output` cannot see from layers:
    a softmax computed inside a `Lambda`, a custom layer or a subclassed
    model. A network whose last operation that changes values is a Keras
    layer (`may_hide_softmax`) is not traced: that costs a second or
    more for large networks.

    Args:
        model: a Keras model with one input and one output tensor.
        input_shape: its input shape without the batch axis.
        dtype: its input dtype.
        role: `"teacher"`, `"student"` or `"model"`, for messages.
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs and not may_hide_softmax(outputs[0]):
        return
    found = final_softmax(model, input_shape, dtype)
    if found is not None:
        raise ValueError(
            validation.softmax_message(role, f"operation {found!r}")
        )


def network_precision(model, input_shape, dtype, training, role, estimator):
    """The coarsest float dtype `model` declares or computes in.

    The difference estimators take their step from it: a step fit for
    float32 on a network that rounds its values to float16 inside (a
    cast in a `Lambda` or custom layer) measures the rounding, not the
    derivative (2x the exact `J v` on a tanh network).

    Args:
        model: a Keras model with one input and one output tensor.
        input_shape: its input shape without the batch axis.
        dtype: its input dtype.
        training: the mode of the differenced pass.
        role: `"teacher"`, `"student"` or `"model"`, for messages.
        estimator: the difference estimator's name, for messages.

    Returns:
        A dtype name of `jacobians.RELATIVE_STEPS`.

    Raises:
        ValueError: when the pass computes in a float dtype that has no
            difference step (float8, float4), or rounds values computed
            from the input (int8 quantization of the inputs of a layer).
    """
    computed, steps = _input_path(model, input_shape, dtype, training)
    if steps:
        raise ValueError(
            f"estimator={estimator!r} divides differences of the {role}'s "
            f"outputs by a small step, but the {role} {model.name!r} "
            f"rounds values computed from its input ({sorted(steps)}; "
            "e.g. a layer quantized to int8 quantizes its inputs): its "
            "output jumps wherever a rounded value changes, and a "
            "difference across a jump measures the jump, not a slope (an "
            "int8-quantized tanh teacher: 16.1 against 3.79 with 'vjp'). "
            "Use estimator='vjp' (the same objective) or 'exact', which "
            "differentiate through the gradient the quantized layers "
            "define (that of their dequantized weights), or quantize "
            "after distillation."
        )
    coarse = sorted(computed - set(jacobians.RELATIVE_STEPS))
    if coarse:
        raise ValueError(
            f"estimator={estimator!r} divides differences of the {role}'s "
            f"outputs by a small step, but the {role} {model.name!r} "
            f"computes in {', '.join(coarse)}, too coarse for a difference "
            "to resolve a derivative (every value is rounded to a few "
            "significant bits). Use estimator='vjp' or 'jvp' (exact "
            "autodiff, the same objective), or compute in float16, "
            "bfloat16 or wider."
        )
    return jacobians.compute_precision(
        jacobians.network_precision(model), *computed
    )


# Operations that read one of their inputs (at this position) as indices.
_LOOKUPS = {
    "GatherV2": 1,
    "ResourceGather": 1,
    "GatherNd": 1,
    "ResourceGatherNd": 1,
    "OneHot": 0,
}


def token_lookups(model, input_shape, dtype, training):
    """Operations that look up rows by integers cast from the input.

    A float input cast to integers and looked up (a `Lambda` cast before
    an `Embedding`) holds token ids: noise added to it changes tokens.

    Returns:
        The sorted names of the lookup operations (empty: none).
    """
    graph_def, start, _ = trace(model, input_shape, dtype, training)
    consumers = {}
    for node in graph_def.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(_reference(name)[0], []).append(
                (node, position)
            )
    todo = [(node, False) for node in graph_def.node if node.name == start]
    seen = {(node.name, False) for node, _ in todo}
    found = set()
    while todo:
        node, cast = todo.pop()
        cast = cast or bool(_steps(node)) and node.op == "Cast"
        if node.op in _SHAPE_OPS:
            continue
        for consumer, position in consumers.get(node.name, ()):
            if cast and _LOOKUPS.get(consumer.op) == position:
                found.add(f"{consumer.op} ({consumer.name})")
            if (consumer.name, cast) not in seen:
                seen.add((consumer.name, cast))
                todo.append((consumer, cast))
    return sorted(found)


def check_no_tokens(model, input_shape, dtype, training):
    """Refuses input noise for a network that casts its input to token
    ids (`token_lookups`); the role is that of the pass's mode."""
    found = token_lookups(model, input_shape, dtype, training)
    if found:
        role = "student" if training else "teacher"
        raise ValueError(
            f"The {role} {model.name!r} casts its input to integers and "
            f"looks them up ({', '.join(found)}): it reads token ids, and "
            "noise added to them would change the tokens. Input noise "
            "needs a network whose input values are continuous. "
            f"{validation.TOKEN_FIX}"
        )
