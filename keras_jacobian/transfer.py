"""Learning without Forgetting: a two-headed student and its task model.

In transfer learning by distillation (LwF, Li & Hoiem 2016; Srinivas &
Fleuret 2018, section 4) the student learns a target task from its labels
while a second head mimics a teacher trained on a source task, on the
target images only. `build_lwf_student` adds both heads to a backbone;
`Distiller(..., distillation_output="source")` sends the compiled loss to
the task head and the distillation terms to the mimic head; `task_model`
returns the trained network without the mimic head.
"""

import numbers

import keras

TASK_HEAD = "task"
SOURCE_HEAD = "source"


def build_lwf_student(
    backbone,
    num_classes,
    num_source_classes,
    pooling="avg",
    dropout=0.0,
    task_name=TASK_HEAD,
    source_name=SOURCE_HEAD,
    name="lwf_student",
):
    """Adds a task head and a source-mimicking head to a backbone.

    The heads are `Dense` layers on the backbone's features (logits, no
    activation). The student is built on the backbone's own graph, so the
    backbone's layers keep their names and stay reachable by name for
    feature and attention terms.

    Args:
        backbone: a Functional (or Sequential, built on `keras.Input`)
            model whose output is a feature vector `(batch, C)` or a
            feature map `(batch, H, W, C)`.
        num_classes: classes of the target task (the task head).
        num_source_classes: classes of the teacher's source task (the
            mimic head); must equal the teacher's output size.
        pooling: for a feature-map output, `"avg"` or `"max"` global
            pooling, or `"flatten"`.
        dropout: dropout rate before the heads (0 for none).
        task_name: layer name of the task head.
        source_name: layer name of the mimic head; pass it to the
            `Distiller` as `distillation_output`.
        name: name of the returned model.

    Returns:
        A Functional `keras.Model` with outputs `[task, source]`.

    Example:

    ```python
    student = keras_jacobian.build_lwf_student(backbone, 67, 1000)
    distiller = keras_jacobian.Distiller(
        teacher, student,
        [keras_jacobian.LogitsDistillation(temperature=2.0, loss="kd")],
        distillation_output="source",
    )
    ```
    """
    for value, label in (
        (num_classes, "num_classes"),
        (num_source_classes, "num_source_classes"),
    ):
        if (
            not isinstance(value, numbers.Integral)
            or isinstance(value, bool)
            or value < 1
        ):
            raise ValueError(
                f"`{label}` must be an integer >= 1. Received: "
                f"{label}={value!r}"
            )
    if pooling not in ("avg", "max", "flatten"):
        raise ValueError(
            "`pooling` must be 'avg', 'max' or 'flatten'. Received: "
            f"pooling={pooling!r}"
        )
    if task_name == source_name:
        raise ValueError(
            "The heads need different names. Received: "
            f"task_name={task_name!r}, source_name={source_name!r}"
        )
    try:
        inputs = backbone.inputs
        outputs = backbone.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not isinstance(backbone, keras.Model) or not inputs or not outputs:
        raise ValueError(
            "`backbone` must be a Functional or Sequential keras.Model built "
            "on `keras.Input`, so that its layers can be read by name. "
            f"Received: {backbone!r}"
        )
    if len(outputs) != 1:
        raise ValueError(
            f"`backbone` must have one output (its features). Received "
            f"{len(outputs)} outputs."
        )
    features = outputs[0]
    rank = len(features.shape)
    if rank == 4:
        layer = {
            "avg": keras.layers.GlobalAveragePooling2D,
            "max": keras.layers.GlobalMaxPooling2D,
            "flatten": keras.layers.Flatten,
        }[pooling]
        features = layer(name=f"{name}_pool")(features)
    elif rank != 2:
        raise ValueError(
            "The backbone's output must be a feature vector (batch, C) or a "
            f"feature map (batch, H, W, C). Received shape "
            f"{tuple(features.shape)}."
        )
    if dropout:
        features = keras.layers.Dropout(dropout, name=f"{name}_dropout")(
            features
        )
    task = keras.layers.Dense(int(num_classes), name=task_name)(features)
    source = keras.layers.Dense(int(num_source_classes), name=source_name)(
        features
    )
    return keras.Model(inputs, [task, source], name=name)


def task_model(student, task_name=TASK_HEAD, name="task_model"):
    """The student without its mimic head: input to task logits.

    Args:
        student: a student from `build_lwf_student` (or any Functional
            model with a layer named `task_name`).
        task_name: the task head's layer name.
        name: name of the returned model.

    Returns:
        A Functional `keras.Model` sharing the student's layers and
        weights, which saves and loads alone.
    """
    names = [layer.name for layer in getattr(student, "layers", [])]
    if task_name not in names:
        raise ValueError(
            f"The student has no layer named {task_name!r}. Available "
            f"layer names: {names}"
        )
    return keras.Model(
        student.inputs, student.get_layer(task_name).output, name=name
    )


def extract_task_model(distiller_or_student, task_name=None):
    """The task model of a trained `Distiller` or of an LwF student.

    Args:
        distiller_or_student: a `Distiller` built with
            `distillation_output`, or a two-headed student.
        task_name: the task head's layer name; by default the one the
            distiller uses, else `"task"`.

    Returns:
        A Functional `keras.Model` from the student's input to its task
        logits.
    """
    from keras_jacobian.distiller import Distiller

    if isinstance(distiller_or_student, Distiller):
        task = distiller_or_student.student_task
        if task is None:
            raise ValueError(
                "This Distiller has no `distillation_output`, so its "
                "student has a single head: use `distiller.student`."
            )
        if task_name is None:
            return keras.Model(task.inputs, task.outputs[0], name="task_model")
        distiller_or_student = distiller_or_student.student
    return task_model(distiller_or_student, task_name or TASK_HEAD)
