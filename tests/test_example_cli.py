"""The example scripts' command line: `--help`, bad flag values.

Each test starts a script in a subprocess (TensorFlow's import dominates:
a few seconds each).
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("distill", "robustness", "transfer", "tune")
MAIN_FLAGS = {
    "distill": ("samples_per_class", "methods", "seeds", "output_dir"),
    "robustness": ("samples_per_class", "methods", "seeds", "output_dir"),
    "transfer": ("samples_per_class", "methods", "seeds", "output_dir"),
    "tune": ("samples_per_class", "output_dir"),
}
HELP_MAX_LINES = 80


def _run(script, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_short_and_lists_the_main_flags(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) <= HELP_MAX_LINES, result.stdout
    for name in MAIN_FLAGS[script] + ("dataset",):
        assert any(line.startswith(f"  --{name}:") for line in lines), name
    # Result tables stay out of --help (they are in docs/examples.md).
    assert not any(line.lstrip().startswith("|") for line in lines)
    assert "docs/examples.md" in result.stdout
    assert "--helpfull" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--methods=act_jacobain"],
            "Received: 'act_jacobain'. Did you mean 'act_jac'?",
        ),
        (
            ["--student_arch=vgg5"],
            "value should be one of <vgg9|vgg4|resnet>. Did you mean 'vgg9'?",
        ),
        (
            ["--jacobian_weight=nan"],
            "flag --jacobian_weight=nan: expected a finite number >= 0",
        ),
        (
            ["--temperature=-1"],
            "flag --temperature=-1.0: expected a finite number > 0",
        ),
    ],
)
def test_bad_flag_value_prints_the_error_alone(args, message, tmp_path):
    result = _run("distill", *args, f"--output_dir={tmp_path}")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("distill.py: error: ")
    assert message in lines[0]
    assert lines[1] == "Run distill.py --help for the main flags."
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("script", ("distill", "transfer", "tune"))
def test_old_student_loss_weight_flag_names_the_new_one(script, tmp_path):
    # A missing data set: a script that accepted the flag stops soon.
    result = _run(
        script,
        "--student_loss_weight=0.5",
        f"--dataset=folder:{tmp_path / 'missing'}",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(
        f"{script}.py: error: flag --student_loss_weight=0.5: this flag was "
        "renamed --supervised_loss_weight"
    )
    assert "convex mix" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bad_supervised_loss_weight_is_refused_at_parsing(tmp_path):
    result = _run(
        "distill", "--supervised_loss_weight=nan", f"--output_dir={tmp_path}"
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "distill.py: error: flag --supervised_loss_weight=nan: expected a "
        "finite number >= 0"
    )
    assert list(tmp_path.iterdir()) == []


def test_list_flag_suggests_the_closest_value():
    sys.path.insert(0, str(ROOT / "examples"))
    import experiment
    from absl import app

    with pytest.raises(app.UsageError, match="Did you mean 'jacobian'?"):
        experiment.check_choices(
            ["none", "jacobain"], ("none", "l2", "jacobian"), "methods"
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag",
    ["--student_image_size=0", "--teacher_image_size=-5", "--batch_size=0"],
)
def test_sizes_below_one_are_refused_at_parsing(flag, tmp_path):
    # --student_image_size=0 used to run at the default size and record 0;
    # negative sizes failed inside TensorFlow. (The bad fraction fails
    # early whatever happens to the size.)
    result = _run(
        "transfer",
        flag,
        "--validation_fraction=2",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 1
    name, value = flag[2:].split("=")
    assert result.stderr.startswith(
        f"transfer.py: error: flag --{name}={value}: expected an integer >= 1"
    ), result.stderr
    assert list(tmp_path.iterdir()) == []
