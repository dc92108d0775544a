r"""Why LwF can hurt: linear probes of the shared features, paired by seed.

The setting of `examples/transfer.py` by default (offline): digits; a VGG-9
(width 32) teacher trained on the source digits 0-4 (random crops, Adam
3e-3, cosine schedule, 20 epochs of at least 20 steps, batch 32: the
recipe of `examples/teachers.py`); a VGG-4 (width 16, no BatchNorm)
two-headed student (`keras_jacobian.build_lwf_student`) trained on the
target digits 5-9 from `--samples_per_class` images per class (Adam 1e-3,
400 steps of batch 32, no augmentation) with cross-entropy on its task
head, plus, for LwF, KD (`--temperature`, weight `--weight`) between the
teacher's source logits and its mimic head on the same images.

Each run records, on the target test images:

- `task`: accuracy of the task head;
- `probe`: accuracy of a fresh linear softmax classifier (multinomial
  logistic regression, L2 penalty `--probe_c` as scikit-learn's `C`, on
  features standardised with the training features' statistics) trained
  on the student's shared features (the `features` layer, the input of
  both heads) of the same target training images;
- `probe_all`: the same probe trained on the features of every target
  training image (how much target information the features hold);
- `ncm`: nearest class mean of the standardised training features;
- `fidelity`: agreement of the mimic head's top-1 with the teacher's
  (`fidelity_train`: on the student's training images);
- `source_probe`: a probe trained on the features of every target
  training image to predict the teacher's top-1 source class (does the
  student's representation move toward the source task?);
- `train`: the task head's accuracy on its training images.

Rows `teacher_features` and `init_features` probe the teacher's
penultimate features and the untrained student's features the same way.

Experiments (`--experiments`), each a list of runs paired with no transfer
(`none`) of the same seed, data and initial weights:

  base         LwF (weight 1, temperature 4) and no transfer
  weight       LwF weights `--weights` (temperature 4)
  temperature  LwF temperatures `--temperatures` (weight 1)
  teacher      teachers `--teachers`: `CLASSES` or `CLASSES@EPOCHS`, e.g.
               `01` (digits 0, 1), `01234@1` (one epoch)
  init         initial weights: init seeds `--init_seeds` other than the
               data seed, and `finetune` (the trunk of a VGG-4 trained on
               the source digits)

Each run appends one JSON line to `--output`; finished runs are skipped,
so a killed study resumes:

  nice python benchmarks/transfer_mechanism.py --threads=1 \
    --output=benchmarks/results/transfer_mechanism/runs.jsonl

  python benchmarks/transfer_mechanism.py \
    --summarize=benchmarks/results/transfer_mechanism/runs.jsonl
"""

import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

STEPS = 400
BATCH = 32
TEACHER_EPOCHS = 20
TEACHER_LEARNING_RATE = 3e-3
STUDENT_LEARNING_RATE = 1e-3
MIN_STEPS_PER_EPOCH = 20
TARGET_CLASSES = (5, 6, 7, 8, 9)
BASE_TEACHER = "01234"
EXPERIMENTS = ("base", "weight", "temperature", "teacher", "init")

flags.DEFINE_list("experiments", list(EXPERIMENTS), "Experiments to run.")
flags.DEFINE_list("samples_per_class", ["5"], "Target images per class.")
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Data seeds.")
flags.DEFINE_list("weights", ["0.3", "1", "10", "30"], "LwF weights.")
flags.DEFINE_list("temperatures", ["1", "2", "4", "8"], "KD temperatures.")
flags.DEFINE_list(
    "teachers", ["01234", "01", "01234@1"], "Teachers: CLASSES[@EPOCHS]."
)
flags.DEFINE_list(
    "init_seeds",
    ["100", "200"],
    "Init seeds added to the data seed by the init experiment.",
)
flags.DEFINE_bool("finetune", True, "Init experiment: a source-trained trunk.")
flags.DEFINE_integer("steps", STEPS, "Training steps per student.")
flags.DEFINE_integer(
    "teacher_epochs", TEACHER_EPOCHS, "Epochs of a teacher without @EPOCHS."
)
flags.DEFINE_float("probe_c", 1.0, "Inverse L2 penalty of the probes.")
flags.DEFINE_string("output", None, "JSON lines file of the runs.")
flags.DEFINE_string(
    "cache_dir",
    "/tmp/keras_jacobian/transfer_mechanism",
    "Teachers (.keras) and the fine-tuning trunk, trained once, reused.",
)
flags.DEFINE_string(
    "features_dir",
    None,
    "Also save each run's probe inputs and outputs there (.npz).",
)
flags.DEFINE_string("summarize", None, "Print the tables of this file.")
flags.DEFINE_integer("threads", 0, "TensorFlow threads per pool (0: all).")
FLAGS = flags.FLAGS


# Probes (NumPy and SciPy: no TensorFlow).


def standardize(train, *others):
    """Features scaled by the training features' mean and std."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def fit_softmax_probe(x, y, num_classes, c=1.0):
    """Multinomial logistic regression, L2-penalised, by L-BFGS.

    Minimises `c * sum_i CE(softmax(x_i W + b), y_i) + ||W||^2 / 2` (the
    objective of scikit-learn's `LogisticRegression(C=c)`; the bias is not
    penalised).

    Returns:
        `(W, b)`, of shapes `(d, num_classes)` and `(num_classes,)`.
    """
    from scipy import optimize

    x = np.asarray(x, "float64")
    n, d = x.shape
    onehot = np.eye(num_classes)[np.asarray(y)]

    def loss_and_grad(theta):
        w = theta[: d * num_classes].reshape(d, num_classes)
        b = theta[d * num_classes :]
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -c * np.sum(onehot * logp) + 0.5 * np.sum(w * w)
        err = c * (np.exp(logp) - onehot)
        grad = np.concatenate([(x.T @ err + w).ravel(), err.sum(axis=0)])
        return loss, grad

    result = optimize.minimize(
        loss_and_grad,
        np.zeros(d * num_classes + num_classes),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10000, "gtol": 1e-9, "ftol": 1e-14},
    )
    theta = result.x
    return theta[: d * num_classes].reshape(d, num_classes), theta[
        d * num_classes :
    ]


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes, c):
    """(accuracy %, test logits) of a softmax probe on standardised x."""
    train_x, test_x = standardize(train_x, test_x)
    w, b = fit_softmax_probe(train_x, train_y, num_classes, c)
    logits = test_x @ w + b
    return 100.0 * float(np.mean(logits.argmax(1) == test_y)), logits


def ncm_accuracy(train_x, train_y, test_x, test_y, num_classes):
    """Accuracy (%) of the nearest class mean of standardised features."""
    train_x, test_x = standardize(train_x, test_x)
    means = np.stack(
        [train_x[train_y == k].mean(0) for k in range(num_classes)]
    )
    dist = ((test_x[:, None, :] - means[None]) ** 2).sum(-1)
    return 100.0 * float(np.mean(dist.argmin(1) == test_y))


# Data, teachers and students (TensorFlow, imported inside).


class Setup:
    """Target data, teachers and compiled distillers, built once."""

    def __init__(self):
        from keras_jacobian.experiments.data import datasets
        from keras_jacobian.experiments.data import sampling

        data = datasets.load_dataset("digits", split_seed=0)
        self.full = data
        self.target = self._subset(data, TARGET_CLASSES)
        self.mean, self.std = sampling.channel_stats(self.target["train"][0])
        self.teachers = {}
        self.teacher_info = {}
        self.distillers = {}
        self.finetune_trunk = None
        os.makedirs(FLAGS.cache_dir, exist_ok=True)

    @staticmethod
    def _subset(data, classes):
        lookup = {c: i for i, c in enumerate(classes)}

        def pick(images, labels):
            keep = np.isin(labels, classes)
            new = np.array([lookup[int(c)] for c in labels[keep]], "int32")
            return images[keep].astype("float32"), new

        train = pick(data.train_images, data.train_labels)
        test = pick(data.test_images, data.test_labels)
        return {"train": train, "test": test, "num_classes": len(classes)}

    def student_view(self, images):
        return ((images - self.mean) / self.std).astype("float32")

    def teacher(self, spec):
        """The teacher `CLASSES[@EPOCHS]`, loaded or trained and saved."""
        if spec in self.teachers:
            return self.teachers[spec]
        import keras

        from keras_jacobian.experiments import models
        from keras_jacobian.experiments.data import pipelines

        classes, epochs = parse_teacher(spec)
        classes_text = "".join(map(str, classes))
        source = self._subset(self.full, classes)
        path = os.path.join(
            FLAGS.cache_dir, f"teacher_digits_{classes_text}_{epochs}ep.keras"
        )
        start = time.time()
        if os.path.exists(path):
            teacher = keras.saving.load_model(path, compile=False)
        else:
            keras.utils.set_random_seed(0)
            x, y = source["train"]
            teacher = models.vgg9(
                x.shape[1:], len(classes), width=32, name="teacher"
            )
            teacher.compile(
                optimizer=keras.optimizers.Adam(TEACHER_LEARNING_RATE),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
            train = pipelines.make_pipeline(
                x,
                y,
                BATCH,
                training=True,
                augment=True,
                flip=False,
                crop_padding=1,
                seed=0,
            ).repeat()

            def rate(epoch, lr=None):
                return float(
                    TEACHER_LEARNING_RATE
                    * 0.5
                    * (1.0 + math.cos(math.pi * epoch / epochs))
                )

            teacher.fit(
                train,
                epochs=epochs,
                steps_per_epoch=max(
                    math.ceil(len(y) / BATCH), MIN_STEPS_PER_EPOCH
                ),
                callbacks=[keras.callbacks.LearningRateScheduler(rate)],
                verbose=0,
                shuffle=False,
            )
            teacher.save(path)
        x, y = source["test"]
        logits = predict(teacher, x)
        self.teacher_info[spec] = {
            "source_accuracy": 100.0 * float(np.mean(logits.argmax(1) == y)),
            "path": path,
        }
        print(
            f"teacher {spec}: source accuracy "
            f"{self.teacher_info[spec]['source_accuracy']:.2f}% "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
        self.teachers[spec] = teacher
        return teacher

    def build_student(self, num_source, seed):
        import keras

        import keras_jacobian as kj
        from keras_jacobian.experiments import models

        keras.utils.set_random_seed(seed)
        net = models.vgg4(
            self.target["train"][0].shape[1:],
            self.target["num_classes"],
            width=16,
            batch_norm=False,
            name="backbone_net",
        )
        backbone = keras.Model(
            net.inputs, net.get_layer("features").output, name="backbone"
        )
        return kj.build_lwf_student(
            backbone, self.target["num_classes"], num_source
        )

    def distiller(self, teacher_spec, temperature):
        """A compiled Distiller per (teacher, temperature), reused."""
        key = (teacher_spec, temperature)
        if key in self.distillers:
            return self.distillers[key]
        import keras

        import keras_jacobian as kj

        teacher = self.teacher(teacher_spec)
        student = self.build_student(int(teacher.output_shape[-1]), 0)
        distiller = kj.Distiller(
            teacher,
            student,
            [kj.LogitsDistillation(temperature=temperature, loss="kd")],
            distillation_output=kj.transfer.SOURCE_HEAD,
            supervised_loss_weight=1.0,
            seed=0,
        )
        distiller.compile(
            optimizer=keras.optimizers.Adam(STUDENT_LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x = self.target["train"][0][:1]
        distiller({"student": self.student_view(x), "teacher": x})
        self.distillers[key] = distiller
        return distiller

    def trunk(self):
        """Weights of a VGG-4 trained on the source digits 0-4."""
        if self.finetune_trunk is not None:
            return self.finetune_trunk
        import keras

        from keras_jacobian.experiments import models

        path = os.path.join(FLAGS.cache_dir, "finetune_vgg4_digits_01234.npz")
        if not os.path.exists(path):
            source = self._subset(self.full, (0, 1, 2, 3, 4))
            x, y = source["train"]
            keras.utils.set_random_seed(0)
            net = models.vgg4(
                x.shape[1:], 5, width=16, batch_norm=False, name="source"
            )
            net.compile(
                optimizer=keras.optimizers.Adam(STUDENT_LEARNING_RATE),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
            net.fit(
                self.student_view(x),
                y,
                batch_size=BATCH,
                epochs=max(1, FLAGS.steps * BATCH // len(y)),
                verbose=0,
            )
            xt, yt = source["test"]
            acc = np.mean(predict(net, self.student_view(xt)).argmax(1) == yt)
            weights = {
                layer.name: layer.get_weights()
                for layer in net.layers
                if layer.get_weights() and layer.name != "logits"
            }
            np.savez(
                path,
                accuracy=100.0 * acc,
                **{
                    f"{name}__{i}": w
                    for name, ws in weights.items()
                    for i, w in enumerate(ws)
                },
            )
        stored = np.load(path)
        trunk = {}
        for key in stored.files:
            if key == "accuracy":
                continue
            name, _, i = key.rpartition("__")
            trunk.setdefault(name, {})[int(i)] = stored[key]
        self.finetune_trunk = (
            {n: [w[i] for i in sorted(w)] for n, w in trunk.items()},
            float(stored["accuracy"]),
        )
        return self.finetune_trunk

    def features(self, model, images):
        return predict(model, images)


def predict(model, images):
    """The model's outputs (NumPy), eagerly: no function traced per model."""
    import keras

    outputs = [
        keras.ops.convert_to_numpy(model(images[i : i + 512], training=False))
        for i in range(0, len(images), 512)
    ]
    return np.concatenate(outputs)


def spec_key(spec):
    return json.dumps(spec, sort_keys=True)


def _numbers(values, flag, kind, minimum):
    """The values of a list flag as numbers >= `minimum`, or a UsageError."""
    try:
        numbers = [kind(v) for v in values]
    except ValueError:
        numbers = None
    if not numbers or min(numbers) < minimum:
        raise app.UsageError(
            f"Expected --{flag} as a comma-separated list of "
            f"{kind.__name__}s >= {minimum:g}. Received: "
            f"--{flag}={','.join(values)}."
        )
    return numbers


def parse_teacher(spec):
    """`(classes, epochs)` of a teacher `CLASSES[@EPOCHS]`, e.g. `01@1`."""
    classes_text, _, epochs = spec.partition("@")
    if (
        not classes_text.isdigit()
        or set(map(int, classes_text)) & set(TARGET_CLASSES)
        or len(set(classes_text)) != len(classes_text)
        or (epochs and (not epochs.isdigit() or int(epochs) < 1))
    ):
        raise app.UsageError(
            "Expected --teachers items CLASSES[@EPOCHS]: distinct source "
            "digits among 0-4 (the target task is 5-9), optionally @ a "
            f"number of epochs >= 1, e.g. 01234 or 01@1. Received: {spec!r}."
        )
    return tuple(int(c) for c in classes_text), int(
        epochs or FLAGS.teacher_epochs
    )


def run_specs():
    """Every run of `--experiments`, without duplicates."""
    spcs = _numbers(FLAGS.samples_per_class, "samples_per_class", int, 1)
    seeds = _numbers(FLAGS.seeds, "seeds", int, 0)
    _numbers(FLAGS.weights, "weights", float, 0)
    _numbers(FLAGS.temperatures, "temperatures", float, 1e-6)
    _numbers(FLAGS.init_seeds, "init_seeds", int, 0)
    for spec in FLAGS.teachers:
        parse_teacher(spec)
    chosen = FLAGS.experiments
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        raise app.UsageError(
            f"Expected --experiments among {list(EXPERIMENTS)}. Received: "
            f"{unknown}."
        )
    base = [("base", BASE_TEACHER, 1.0, 4.0)]
    phases = {
        "base": base,
        "weight": [
            ("weight", BASE_TEACHER, float(w), 4.0) for w in FLAGS.weights
        ],
        "temperature": [
            ("temperature", BASE_TEACHER, 1.0, float(t))
            for t in FLAGS.temperatures
        ],
        "teacher": [("teacher", t, 1.0, 4.0) for t in FLAGS.teachers],
        "init": [("init", BASE_TEACHER, 1.0, 4.0, o) for o in FLAGS.init_seeds]
        + ([("init", BASE_TEACHER, 1.0, 4.0, "finetune")] * FLAGS.finetune),
    }
    # Order: images per class, then experiment, then seed, so that a
    # partial study already holds every seed of the first experiments.
    specs = []
    for spc in spcs:
        for phase in ["base"] + [e for e in EXPERIMENTS if e in chosen]:
            for seed in seeds:
                for config in phases[phase]:
                    specs += _phase_specs(config, spc, seed)
    unique = {}
    for spec in specs:
        unique.setdefault(spec_key(spec), spec)
    return list(unique.values())


def _phase_specs(config, spc, seed):
    """The runs of one configuration: LwF, its no transfer and probes."""
    teacher, weight, temperature = config[1:4]
    init, offset = "seed", 0
    if len(config) > 4:
        init, offset = (
            ("finetune", 0) if config[4] == "finetune" else ("seed", config[4])
        )
    common = dict(spc=spc, seed=seed, init=init, init_seed=seed + int(offset))
    return [
        dict(kind="teacher_features", teacher=teacher, spc=spc, seed=seed),
        dict(kind="init_features", **common),
        dict(kind="none", **common),
        dict(
            kind="lwf",
            weight=weight,
            temperature=temperature,
            teacher=teacher,
            **common,
        ),
    ]


def run_one(setup, spec):
    """Trains (or probes) one spec; the record to write."""
    import keras
    import tensorflow as tf

    from keras_jacobian.experiments.data import sampling

    target = setup.target
    k = target["num_classes"]
    x_all, y_all = target["train"]
    x_test, y_test = target["test"]
    idx = sampling.stratified_subsample(y_all, spec["spc"], spec["seed"])
    x, y = x_all[idx], y_all[idx]
    record = dict(spec)
    c = FLAGS.probe_c
    start = time.time()

    def save(suffix, train_x, train_y, test_x, logits, acc):
        if not FLAGS.features_dir:
            return
        os.makedirs(FLAGS.features_dir, exist_ok=True)
        name = "_".join(f"{key}{spec[key]}" for key in sorted(spec))
        np.savez(
            os.path.join(FLAGS.features_dir, f"{name}_{suffix}.npz"),
            train=train_x,
            train_labels=train_y,
            test=test_x,
            test_labels=y_test,
            logits=logits,
            accuracy=acc,
            c=c,
        )

    def probes(feature_fn):
        f_train, f_all, f_test = (feature_fn(a) for a in (x, x_all, x_test))
        acc, logits = probe_accuracy(f_train, y, f_test, y_test, k, c)
        save("few", f_train, y, f_test, logits, acc)
        record["probe"] = acc
        acc, logits = probe_accuracy(f_all, y_all, f_test, y_test, k, c)
        save("all", f_all, y_all, f_test, logits, acc)
        record["probe_all"] = acc
        record["ncm"] = ncm_accuracy(f_train, y, f_test, y_test, k)

    def source_probe(feature_fn):
        """How well the features tell the teacher's top-1 source class."""
        teacher = setup.teacher(spec.get("teacher", BASE_TEACHER))
        labels = [predict(teacher, a).argmax(1) for a in (x_all, x_test)]
        present = np.unique(labels[0])
        index = {c: i for i, c in enumerate(present)}
        train_labels = np.array([index[c] for c in labels[0]])
        # A source class the teacher never picks on the training images
        # cannot be predicted: its test images count as errors.
        test_labels = np.array([index.get(c, -1) for c in labels[1]])
        record["source_probe"] = probe_accuracy(
            feature_fn(x_all),
            train_labels,
            feature_fn(x_test),
            test_labels,
            len(present),
            c,
        )[0]

    if spec["kind"] == "teacher_features":
        teacher = setup.teacher(spec["teacher"])
        features = keras.Model(
            teacher.inputs, teacher.get_layer("features").output
        )
        probes(lambda a: setup.features(features, a))
        record.update(setup.teacher_info[spec["teacher"]])
        return record

    teacher_spec = spec.get("teacher", BASE_TEACHER)
    temperature = spec.get("temperature", 4.0)
    distiller = setup.distiller(teacher_spec, temperature)
    student = distiller.student
    fresh = setup.build_student(
        int(setup.teacher(teacher_spec).output_shape[-1]), spec["init_seed"]
    )
    weights = {layer.name: layer.get_weights() for layer in fresh.layers}
    if spec["init"] == "finetune":
        trunk, record["finetune_source_accuracy"] = setup.trunk()
        weights.update(trunk)
    for layer in student.layers:
        layer.set_weights(weights[layer.name])
    features = keras.Model(student.inputs, student.get_layer("features").output)
    view = setup.student_view
    if spec["kind"] == "init_features":
        probes(lambda a: setup.features(features, view(a)))
        source_probe(lambda a: setup.features(features, view(a)))
        return record

    for variable in distiller.optimizer.variables:
        if "learning_rate" not in variable.path:
            variable.assign(keras.ops.zeros_like(variable))
    weight = spec["weight"] if spec["kind"] == "lwf" else 0.0
    distiller.term_weights[0].assign(weight)
    train = (
        tf.data.Dataset.from_tensor_slices(
            ({"student": view(x), "teacher": x}, y)
        )
        .shuffle(len(y), seed=spec["seed"], reshuffle_each_iteration=True)
        .batch(BATCH)
        .repeat()
    )
    keras.utils.set_random_seed(spec["seed"])
    distiller.fit(
        train,
        epochs=1,
        steps_per_epoch=FLAGS.steps,
        verbose=0,
        shuffle=False,
    )
    task = keras.Model(student.inputs, student.get_layer("task").output)

    def accuracy(model, images, labels):
        logits = predict(model, view(images))
        return 100.0 * float(np.mean(logits.argmax(1) == labels))

    record["task"] = accuracy(task, x_test, y_test)
    record["train"] = accuracy(task, x, y)
    mimic = keras.Model(student.inputs, student.get_layer("source").output)
    teacher = setup.teacher(teacher_spec)
    agree = predict(mimic, view(x_test)).argmax(1) == predict(
        teacher, x_test
    ).argmax(1)
    record["fidelity"] = 100.0 * float(np.mean(agree))
    agree = predict(mimic, view(x)).argmax(1) == predict(teacher, x).argmax(1)
    record["fidelity_train"] = 100.0 * float(np.mean(agree))
    probes(lambda a: setup.features(features, view(a)))
    source_probe(lambda a: setup.features(features, view(a)))
    record["seconds"] = time.time() - start
    return record


# Summary.


def _load(path):
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def interval(values):
    """Mean and 95% t-interval (half-width) of paired differences."""
    from scipy import stats

    d = np.asarray(values, "float64")
    if len(d) < 2:
        return float(d.mean()) if len(d) else float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(half)


def _cell(values):
    mean, half = interval(values)
    if math.isnan(half):
        return f"{mean:+.2f}"
    text = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
    return f"**{text}**" if abs(mean) > half else text


def _mean(values):
    return f"{np.mean(values):.2f}" if len(values) else "-"


def _none_of(runs, r):
    for other in runs:
        if other["kind"] == "none" and all(
            other[key] == r[key] for key in ("spc", "seed", "init", "init_seed")
        ):
            return other
    return None


def lwf_table(runs, select, label):
    """Rows of LwF configs: means and paired differences with none."""
    metrics = ("task", "probe", "probe_all", "ncm")
    lines = [
        f"| {label} | n | none task | LwF task | Δ task | LwF probe | "
        "Δ probe | "
        "Δ probe (all imgs) | Δ NCM | fidelity | train |",
        "|---" * 11 + "|",
    ]
    groups = {}
    for r in runs:
        if r["kind"] == "lwf" and select(r):
            groups.setdefault(label_of(r, label), []).append(r)
    for name, rows in groups.items():
        pairs = [(r, _none_of(runs, r)) for r in rows]
        pairs = [(r, n) for r, n in pairs if n is not None]
        diffs = {m: [r[m] - n[m] for r, n in pairs] for m in metrics}
        lines.append(
            f"| {name} | {len(pairs)} | {_mean([n['task'] for _, n in pairs])}"
            f" | {_mean([r['task'] for r, _ in pairs])}"
            f" | {_cell(diffs['task'])} "
            f"| {_mean([r['probe'] for r, _ in pairs])} "
            f"| {_cell(diffs['probe'])} | {_cell(diffs['probe_all'])} "
            f"| {_cell(diffs['ncm'])} "
            f"| {_mean([r['fidelity'] for r, _ in pairs])} "
            f"| {_mean([r['train'] for r, _ in pairs])} |"
        )
    return lines


def label_of(r, label):
    return {
        "weight": lambda: f"{r['weight']:g}",
        "temperature": lambda: f"{r['temperature']:g}",
        "teacher": lambda: r["teacher"],
        "init": lambda: (
            "finetune"
            if r["init"] == "finetune"
            else f"seed+{r['init_seed'] - r['seed']}"
        ),
    }[label]()


def summarize(path):
    runs = _load(path)
    out = []
    for spc in sorted({r["spc"] for r in runs}, reverse=True):
        here = [r for r in runs if r["spc"] == spc]
        base = [
            r
            for r in here
            if r.get("init", "seed") == "seed"
            and r.get("init_seed") == r["seed"]
        ]
        seeds = sorted({r["seed"] for r in here})
        out.append(f"\n## {spc} image(s) per class, seeds {seeds}\n")
        out.append(
            "Accuracy (%) on the target test images, mean over seeds: "
            "task head, and probes of the shared features (softmax probe "
            "on the training images / on every target training image, "
            "nearest class mean).\n"
        )
        out.append("| features | n | task | probe | probe (all imgs) | NCM |")
        out.append("|---|---|---|---|---|---|")
        rows = [
            ("no transfer", [r for r in base if r["kind"] == "none"]),
            (
                "LwF (w 1, T 4)",
                [
                    r
                    for r in base
                    if r["kind"] == "lwf"
                    and r["weight"] == 1.0
                    and r["temperature"] == 4.0
                    and r["teacher"] == BASE_TEACHER
                ],
            ),
            (
                "untrained student",
                [r for r in base if r["kind"] == "init_features"],
            ),
        ]
        for t in sorted(
            {r["teacher"] for r in here if r["kind"] == "teacher_features"}
        ):
            rows.append(
                (
                    f"teacher {t}",
                    [
                        r
                        for r in here
                        if r["kind"] == "teacher_features" and r["teacher"] == t
                    ],
                )
            )
        for name, rs in rows:
            if not rs:
                continue
            task = _mean([r["task"] for r in rs]) if "task" in rs[0] else "-"
            out.append(
                f"| {name} | {len(rs)} | {task} | "
                f"{_mean([r['probe'] for r in rs])} | "
                f"{_mean([r['probe_all'] for r in rs])} | "
                f"{_mean([r['ncm'] for r in rs])} |"
            )
        info = {}
        for r in here:
            if r["kind"] == "teacher_features":
                info[r["teacher"]] = r["source_accuracy"]
        if info:
            out.append(
                "\nTeachers' source-task test accuracy: "
                + ", ".join(f"{t}: {a:.2f}%" for t, a in sorted(info.items()))
            )
        out.append(
            "\nLwF − no transfer, paired by seed (points, mean [95% "
            "interval], bold when it excludes zero); fidelity: mimic head "
            "top-1 = teacher top-1 (%); "
            "train: task head on its training images (%).\n"
        )
        for label, select in (
            (
                "weight",
                lambda r: (
                    r["temperature"] == 4.0 and r["teacher"] == BASE_TEACHER
                ),
            ),
            (
                "temperature",
                lambda r: r["weight"] == 1.0 and r["teacher"] == BASE_TEACHER,
            ),
            (
                "teacher",
                lambda r: r["weight"] == 1.0 and r["temperature"] == 4.0,
            ),
        ):
            selected = [r for r in base if r["kind"] == "lwf" and select(r)]
            if len({label_of(r, label) for r in selected}) > 1 or (
                label == "weight" and selected
            ):
                out += lwf_table(base, select, label) + [""]
        if any("source_probe" in r for r in base if r["kind"] == "lwf"):
            out += source_table(base) + [""]
        init_runs = [
            r
            for r in here
            if r["kind"] == "lwf"
            and r["weight"] == 1.0
            and r["temperature"] == 4.0
            and r["teacher"] == BASE_TEACHER
        ]
        if len({label_of(r, "init") for r in init_runs}) > 1:
            out += lwf_table(
                here,
                lambda r: (
                    r["weight"] == 1.0
                    and r["temperature"] == 4.0
                    and r["teacher"] == BASE_TEACHER
                ),
                "init",
            ) + [""]
            out += init_spread(here)
    return "\n".join(out)


def source_table(runs):
    """Do the features tell the teacher's source classes better?"""
    lines = [
        "Source probe: a softmax probe trained on every target training "
        "image to predict the teacher's top-1 source class, tested on the "
        "target test images (%); LwF − no transfer paired by seed; "
        "fidelity on the student's own training images (%).\n",
        "| features | n | source probe | Δ source probe | fidelity (train) |",
        "|---|---|---|---|---|",
    ]
    nones = [r for r in runs if r["kind"] == "none" and "source_probe" in r]
    inits = [
        r for r in runs if r["kind"] == "init_features" and "source_probe" in r
    ]
    for name, rows in (("untrained student", inits), ("no transfer", nones)):
        if rows:
            lines.append(
                f"| {name} | {len(rows)} | "
                f"{_mean([r['source_probe'] for r in rows])} | - | "
                + (
                    _mean([r["fidelity_train"] for r in rows])
                    if "fidelity_train" in rows[0]
                    else "-"
                )
                + " |"
            )
    weights = sorted(
        {
            r["weight"]
            for r in runs
            if r["kind"] == "lwf"
            and "source_probe" in r
            and r["temperature"] == 4.0
            and r["teacher"] == BASE_TEACHER
        }
    )
    for weight in weights:
        pairs = [
            (r, _none_of(runs, r))
            for r in runs
            if r["kind"] == "lwf"
            and "source_probe" in r
            and r["weight"] == weight
            and r["temperature"] == 4.0
            and r["teacher"] == BASE_TEACHER
        ]
        pairs = [(r, n) for r, n in pairs if n is not None]
        lines.append(
            f"| LwF weight {weight:g} | {len(pairs)} | "
            f"{_mean([r['source_probe'] for r, _ in pairs])} | "
            + _cell([r["source_probe"] - n["source_probe"] for r, n in pairs])
            + f" | {_mean([r['fidelity_train'] for r, _ in pairs])} |"
        )
    return lines


def init_spread(runs):
    """Does the init seed move accuracy more than the method does?"""
    lines = [
        "Init seed against method (task accuracy, points): spread over "
        "init seeds of one method on the same images (mean over data "
        "seeds of the mean absolute difference between two init seeds), "
        "against LwF − no transfer.\n",
        "| quantity | mean over data seeds |",
        "|---|---|",
    ]
    seeds = sorted({r["seed"] for r in runs})
    spreads = {"none": [], "lwf": []}
    effect = []
    for seed in seeds:
        for kind in spreads:
            accs = [
                r["task"]
                for r in runs
                if r["kind"] == kind
                and r["seed"] == seed
                and r["init"] == "seed"
                and (
                    kind == "none"
                    or (
                        r["weight"] == 1.0
                        and r["temperature"] == 4.0
                        and r["teacher"] == BASE_TEACHER
                    )
                )
            ]
            if len(accs) > 1:
                spreads[kind].append(
                    np.mean(
                        [
                            abs(a - b)
                            for i, a in enumerate(accs)
                            for b in accs[i + 1 :]
                        ]
                    )
                )
        for r in runs:
            if (
                r["kind"] == "lwf"
                and r["seed"] == seed
                and r["init"] == "seed"
                and r["weight"] == 1.0
                and r["temperature"] == 4.0
                and r["teacher"] == BASE_TEACHER
            ):
                n = _none_of(runs, r)
                if n is not None:
                    effect.append(abs(r["task"] - n["task"]))
    for kind, values in spreads.items():
        if values:
            lines.append(
                f"| init-seed spread, {kind} | {np.mean(values):.2f} |"
            )
    per_seed = []
    for seed in seeds:
        diffs = [
            r["task"] - _none_of(runs, r)["task"]
            for r in runs
            if r["kind"] == "lwf"
            and r["seed"] == seed
            and r["init"] == "seed"
            and r["weight"] == 1.0
            and r["temperature"] == 4.0
            and r["teacher"] == BASE_TEACHER
            and _none_of(runs, r) is not None
        ]
        if len(diffs) > 1:
            per_seed.append(np.mean(diffs))
    if len(per_seed) > 1:
        lines.append(
            "| LwF − no transfer, mean over init seeds, interval over "
            f"data seeds | {_cell(per_seed)} |"
        )
    tuned = {
        r["seed"]: r
        for r in runs
        if r["kind"] == "none" and r["init"] == "finetune"
    }
    scratch = {
        r["seed"]: r
        for r in runs
        if r["kind"] == "none"
        and r["init"] == "seed"
        and r["init_seed"] == r["seed"]
    }
    both = sorted(set(tuned) & set(scratch))
    if len(both) > 1:
        source = tuned[both[0]].get("finetune_source_accuracy", float("nan"))
        lines.append(
            "| no transfer, trunk trained on digits 0-4 (source test "
            f"accuracy {source:.2f}%) − random trunk | "
            f"{_cell([tuned[s]['task'] - scratch[s]['task'] for s in both])} |"
        )
    if effect:
        lines.append(
            f"| abs(LwF − no transfer), per (data, init) seed | "
            f"{np.mean(effect):.2f} |"
        )
    return lines + [""]


def run_settings():
    """Settings every run of one --output file must share."""
    return {
        "steps": FLAGS.steps,
        "teacher_epochs": FLAGS.teacher_epochs,
        "probe_c": FLAGS.probe_c,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.summarize:
        print(summarize(FLAGS.summarize))
        return
    if not FLAGS.output:
        raise app.UsageError(
            "Expected --output=FILE.jsonl (or --summarize=FILE). Received "
            "neither."
        )
    specs = run_specs()
    out = pathlib.Path(FLAGS.output)
    settings = run_settings()
    for record in _load(out):
        found = {k: record.get(k) for k in settings}
        if found != settings:
            raise app.UsageError(
                f"Expected the runs of {out} to share these settings: "
                f"{settings}. Received a run with {found}. Pass another "
                "--output for other settings."
            )
    import warnings

    import keras_jacobian  # noqa: F401  (first: quiet TensorFlow start-up)

    # Models called on a tensor rather than a dict of their one input.
    warnings.filterwarnings("ignore", message=r"The structure of `inputs`")
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {
        spec_key({k: v for k, v in r.items() if k in spec_fields(r)})
        for r in _load(out)
    }
    setup = Setup()
    todo = [s for s in specs if spec_key(s) not in done]
    print(f"{len(specs)} runs, {len(todo)} to do", flush=True)
    start = time.time()
    for i, spec in enumerate(todo, 1):
        record = run_one(setup, spec)
        record.update(settings)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"[{i}/{len(todo)}] {spec_key(spec)} task="
            f"{record.get('task', float('nan')):.2f} probe="
            f"{record['probe']:.2f} ({time.time() - start:.0f} s)",
            flush=True,
        )


SPEC_FIELDS = (
    "kind",
    "teacher",
    "spc",
    "seed",
    "init",
    "init_seed",
    "weight",
    "temperature",
)


def spec_fields(record):
    return [k for k in SPEC_FIELDS if k in record]


if __name__ == "__main__":
    app.run(main)
