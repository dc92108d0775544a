r"""Step time and peak memory of every training-step variant.

Command (default models: VGG-9 teacher, VGG-4 student, 32x32x3 inputs,
100 classes, batch 64; 11 to 20 minutes on 2 CPU cores):

    python benchmarks/run.py --output_dir=benchmarks/results

Writes `results.json` and `results.md` to `--output_dir` and prints the
table. Each step is the model's own `train_step` inside the `tf.function`
that `fit` builds (`model.make_train_function()`, reached through one
short `fit` call that also serves as warm-up), called on a repeated
`tf.data` iterator of one fixed batch, so the timed work is exactly what
`fit` runs per step minus callbacks. Variants are timed in interleaved
rounds (the order rotates each round) so that load from other processes
hits every variant alike; the median over all timed steps is reported.

Peak memory: each variant runs again in a fresh subprocess
(`--memory_probe=<variant>`). `peak_mb`: the peak resident set size
(`VmHWM` of `/proc/self/status`, reset through `/proc/self/clear_refs`
after the models are built) of tracing and the first step, minus the
resident size before. `step_peak_mb`: the same over two later steps,
from the resident size after the first (a lower bound on the step's
working memory: what the allocator kept from the first step is not
counted again). `tf.config.experimental.get_memory_info("CPU:0")`
returns zeros on CPU, so it cannot be used.

When `torch` is importable, a PyTorch reference of the activation-only
and the top-1 Jacobian step (same architectures, same batch, the usual
`torch.autograd.grad(..., create_graph=True)`) and of the whole-Jacobian
steps along one input direction (`torch.func.jvp`, one-sided and central
differences) is timed in the same rounds, with `torch.set_num_threads`
equal to TensorFlow's thread count.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import variants as variants_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "benchmarks/results", "Where to write.")
flags.DEFINE_enum("models", "vgg", ["vgg", "tiny"], "Teacher/student pair.")
flags.DEFINE_integer("input_size", 32, "Input height and width.")
flags.DEFINE_integer("channels", 3, "Input channels.")
flags.DEFINE_integer("num_classes", 100, "Number of classes.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 5, "Timed steps per variant per round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps (the first one traces).")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds.")
flags.DEFINE_list(
    "variants", [], "Variants to run (default: every default variant)."
)
flags.DEFINE_boolean("memory", True, "Measure peak memory (subprocesses).")
flags.DEFINE_list(
    "memory_variants", [], "Variants whose memory is measured (default: all)."
)
flags.DEFINE_boolean("torch", True, "Time the PyTorch reference if found.")
flags.DEFINE_integer(
    "threads", 0, "Intra-op threads of TF and torch; 0: CPU count."
)
flags.DEFINE_boolean("jit_compile", False, "XLA for every variant.")
flags.DEFINE_boolean(
    "run_eagerly", False, "No tf.function (smoke tests only: not timed as fit)."
)
flags.DEFINE_string(
    "memory_probe", None, "Internal: measure one variant's memory."
)
flags.DEFINE_integer("seed", 0, "Seed of the models and the batch.")


def selected_variants():
    names = FLAGS.variants or [
        v.name for v in variants_lib.VARIANTS.values() if v.default
    ]
    unknown = [n for n in names if n not in variants_lib.VARIANTS]
    if unknown:
        raise ValueError(
            f"Unknown variants {unknown}. Known: "
            f"{sorted(variants_lib.VARIANTS)}"
        )
    # Baselines are always run, so that every ratio has a denominator.
    needed = []
    for name in names:
        baseline = variants_lib.VARIANTS[name].baseline
        for n in (baseline, name):
            if n not in needed:
                needed.append(n)
    return needed


def make_setup():
    tf.keras.utils.set_random_seed(FLAGS.seed)
    shape = (FLAGS.input_size, FLAGS.input_size, FLAGS.channels)
    teacher, student = variants_lib.build_models(
        FLAGS.models, shape, FLAGS.num_classes
    )
    rng = np.random.default_rng(FLAGS.seed)
    x = tf.constant(rng.normal(size=(FLAGS.batch_size,) + shape), "float32")
    y = tf.constant(rng.integers(0, FLAGS.num_classes, FLAGS.batch_size))
    return variants_lib.Setup(
        teacher,
        student,
        (x, y),
        jit_compile=FLAGS.jit_compile,
        run_eagerly=FLAGS.run_eagerly,
    )


class KerasStep:
    """One training step of a compiled model, as `fit` runs it."""

    def __init__(self, model, batch):
        self.model = model
        self.traces = 0
        step = model.train_step

        def counted(data):
            self.traces += 1
            return step(data)

        model.train_step = counted
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        # One short fit builds the optimizer and metrics and traces the
        # step: the warm-up.
        model.fit(
            dataset, steps_per_epoch=max(FLAGS.warmup, 1), epochs=1, verbose=0
        )
        self.function = model.train_function
        self.iterator = iter(dataset)

    def __call__(self):
        logs = self.function(self.iterator)
        if hasattr(logs, "get_value"):
            logs = logs.get_value()
        tf.nest.map_structure(lambda t: t.numpy(), logs)


def build_runners(setup, names):
    runners = {}
    errors = {}
    for index, name in enumerate(names, start=1):
        _progress(f"building {index}/{len(names)}: {name}")
        variant = variants_lib.VARIANTS[name]
        try:
            model, batch = variant.build(setup)
            runners[name] = KerasStep(model, batch)
        except Exception as error:  # noqa: BLE001 - reported in the table
            errors[name] = f"{type(error).__name__}: {error}"
    return runners, errors


def torch_runners(setup):
    try:
        from benchmarks import torch_reference
    except ImportError:
        return {}, None
    threads = tf_threads()
    x, y = setup.batch
    steps = torch_reference.make_steps(
        setup.teacher,
        setup.student,
        x.numpy(),
        y.numpy(),
        threads=threads,
        seed=FLAGS.seed,
    )
    # torch's first calls are slow (kernel selection): warm up more.
    for step in steps.values():
        for _ in range(max(FLAGS.warmup, 3)):
            step()
    return steps, torch_reference.describe(threads)


def _progress(message):
    """One line of progress on stderr (the table goes to stdout)."""
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def tf_threads():
    return tf.config.threading.get_intra_op_parallelism_threads() or (
        os.cpu_count()
    )


def time_rounds(runners, fractions):
    """Interleaved rounds; returns {name: [seconds per step, ...]}."""
    names = list(runners)
    times = {name: [] for name in names}
    for round_index in range(FLAGS.repeats):
        _progress(f"timing round {round_index + 1}/{FLAGS.repeats}")
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            steps = max(1, int(round(FLAGS.steps * fractions.get(name, 1))))
            for _ in range(steps):
                start = time.perf_counter()
                runners[name]()
                times[name].append(time.perf_counter() - start)
    return times


def _status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_probe(name):
    """Peak RSS growth (MB) of tracing and running one variant."""
    setup = make_setup()
    model, batch = variants_lib.VARIANTS[name].build(setup)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    step = KerasStep(model, batch)
    step()
    traced_peak = _status_kb("VmHWM")
    # The same after tracing: the steps' own working memory (a lower
    # bound, since memory the allocator kept from the first step is not
    # counted again).
    settled = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    step()
    step()
    step_peak = _status_kb("VmHWM")
    return (traced_peak - before) / 1024.0, (step_peak - settled) / 1024.0


def measure_memory(names):
    """Runs each variant's memory probe in a fresh subprocess."""
    results = {}
    script = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(script))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    passed = [
        f"--models={FLAGS.models}",
        f"--input_size={FLAGS.input_size}",
        f"--channels={FLAGS.channels}",
        f"--num_classes={FLAGS.num_classes}",
        f"--batch_size={FLAGS.batch_size}",
        f"--warmup={FLAGS.warmup}",
        f"--threads={FLAGS.threads}",
        f"--seed={FLAGS.seed}",
        f"--jit_compile={FLAGS.jit_compile}",
    ]
    for index, name in enumerate(names, start=1):
        _progress(f"memory {index}/{len(names)}: {name}")
        proc = subprocess.run(
            [sys.executable, script, f"--memory_probe={name}"] + passed,
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [
            line
            for line in proc.stdout.splitlines()
            if line.startswith("PEAK_MB ")
        ]
        results[name] = (
            [float(v) for v in lines[-1].split()[1:]] if lines else None
        )
    return results


def summarize(times, memory, errors, traces, torch_info):
    rows = {}
    medians = {name: float(np.median(t)) for name, t in times.items()}
    baselines = dict(variants_lib_baselines())
    baselines.update(
        {
            name: "torch_activation"
            for name in times
            if name.startswith("torch_jacobian")
        }
    )
    for name, median in medians.items():
        base = baselines.get(name, name)
        row = {
            "baseline": base,
            "median_step_s": median,
            "steps_timed": len(times[name]),
            "ratio": (median / medians[base] if base in medians else None),
            "retraces": traces.get(name),
        }
        if memory:
            mem = memory.get(name) or [None, None]
            base_mem = memory.get(base) or [None, None]
            row["peak_mb"], row["step_peak_mb"] = mem
            row["memory_ratio"] = _ratio(mem[0], base_mem[0])
            row["step_memory_ratio"] = _ratio(mem[1], base_mem[1])
        rows[name] = row
    for name, error in errors.items():
        rows[name] = {"baseline": baselines.get(name), "error": error}
    return {
        "config": {
            "models": FLAGS.models,
            "input_shape": [FLAGS.input_size, FLAGS.input_size, FLAGS.channels],
            "num_classes": FLAGS.num_classes,
            "batch_size": FLAGS.batch_size,
            "steps": FLAGS.steps,
            "warmup": FLAGS.warmup,
            "repeats": FLAGS.repeats,
            "jit_compile": FLAGS.jit_compile,
            "run_eagerly": FLAGS.run_eagerly,
            "tf_threads": tf_threads(),
            "tensorflow": tf.__version__,
            "torch": torch_info,
            "load_average": list(os.getloadavg()),
            "timing": "model.train_function (the tf.function fit runs) on "
            "a repeated one-batch iterator; interleaved rounds; median",
            "memory": "per variant in a fresh subprocess: peak_mb = peak "
            "RSS (VmHWM, reset via clear_refs) of tracing and the first "
            "step minus RSS before; step_peak_mb = the same over two "
            "later steps, from the RSS after the first",
        },
        "variants": rows,
    }


def _ratio(a, b):
    return a / b if a and b else None


def variants_lib_baselines():
    return {name: v.baseline for name, v in variants_lib.VARIANTS.items()}


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(summary):
    config = summary["config"]
    lines = [
        f"Models `{config['models']}`, input {config['input_shape']}, "
        f"{config['num_classes']} classes, batch {config['batch_size']}, "
        f"TF {config['tensorflow']} with {config['tf_threads']} threads"
        + (f", {config['torch']}" if config["torch"] else "")
        + f", load average {config['load_average'][0]:.1f}.",
        "",
        "| variant | baseline | median step (ms) | ratio | peak MB "
        "| memory ratio | step peak MB | step memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary["variants"].items():
        if "error" in row:
            lines.append(
                f"| {name} | {row['baseline']} | error: "
                f"{row['error'][:60]} | | | | | |"
            )
            continue
        lines.append(
            f"| {name} | {row['baseline']} | "
            f"{row['median_step_s'] * 1000:.1f} | "
            f"{_fmt(row['ratio'], '.2f')} | "
            f"{_fmt(row.get('peak_mb'), '.0f')} | "
            f"{_fmt(row.get('memory_ratio'), '.2f')} | "
            f"{_fmt(row.get('step_peak_mb'), '.0f')} | "
            f"{_fmt(row.get('step_memory_ratio'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    run()


def run():
    """Runs the benchmark as the flags say; returns the summary dict."""
    tf.get_logger().setLevel("ERROR")
    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    if FLAGS.memory_probe:
        traced, steps = memory_probe(FLAGS.memory_probe)
        print(f"PEAK_MB {traced} {steps}")
        return None
    names = selected_variants()
    setup = make_setup()
    runners, errors = build_runners(setup, names)
    traces_before = {name: r.traces for name, r in runners.items()}
    fractions = {
        name: variants_lib.VARIANTS[name].step_fraction for name in runners
    }
    steps = dict(runners)
    torch_info = None
    if FLAGS.torch:
        torch_steps, torch_info = torch_runners(setup)
        steps.update(torch_steps)
    times = time_rounds(steps, fractions)
    # Traces of train_step during the timed steps: 0 means no retracing.
    traces = {
        name: None if FLAGS.run_eagerly else r.traces - traces_before[name]
        for name, r in runners.items()
    }
    memory = None
    if FLAGS.memory:
        probed = [n for n in runners if n in FLAGS.memory_variants] or list(
            runners
        )
        memory = measure_memory(probed)
    summary = summarize(times, memory, errors, traces, torch_info)
    table = markdown(summary)
    print(table)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
        f.write(table)
    return summary


if __name__ == "__main__":
    app.run(main)
