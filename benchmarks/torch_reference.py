"""PyTorch reference of the activation-only and top-1 Jacobian steps.

The Keras teacher and student are rebuilt layer by layer as `torch.nn`
modules (same layers, same widths, weights copied), and one training step
of each kind is written the common PyTorch way:

- activation only: the teacher under `torch.no_grad()`, then
  cross-entropy plus `T^2 KL` on the student, `backward`, SGD step;
- top-1 Jacobian matching: the input requires grad, the teacher's top-1
  input gradient from `torch.autograd.grad`, the student's from
  `torch.autograd.grad(..., create_graph=True)`, the squared distance of
  the L2-normalised rows added to the same loss, `backward`, SGD step.

- the whole Jacobian along one random input direction `v` (unit norm
  over the `D` input values), `D * ||J_T v - J_S v||^2` added to the same
  loss, with `J v` from `torch.func.jvp` (the student's under autograd:
  reverse-over-forward), from one-sided differences
  `(F(x + eps v) - F(x)) / eps` (one batch of 2B through each network)
  or from central differences (one batch of 3B), as the Keras
  estimators `"jvp"`, `"forward_difference"` and `"finite_difference"`.

`benchmarks/run.py` times them in the same rounds as the Keras steps, so
the two frameworks' Jacobian/activation ratios are measured side by side.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 4.0


class _NHWCFlatten(nn.Module):
    """Flattens NCHW as Keras flattens NHWC, so Dense weights carry over."""

    def forward(self, x):
        return torch.flatten(x.permute(0, 2, 3, 1), 1)


def to_torch(model):
    """A `torch.nn.Sequential` equivalent of a chain-shaped Keras model."""
    modules = []
    for layer in model.layers:
        kind = type(layer).__name__
        config = layer.get_config()
        if kind == "InputLayer":
            continue
        if kind == "Conv2D":
            kernel, bias = layer.get_weights()
            conv = nn.Conv2d(
                kernel.shape[2],
                kernel.shape[3],
                kernel.shape[:2],
                stride=config["strides"],
                padding=config["padding"],
            )
            conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1))
            conv.bias.data = torch.tensor(bias)
            modules.append(conv)
            activation = config.get("activation", "linear")
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            dense = nn.Linear(kernel.shape[0], kernel.shape[1])
            dense.weight.data = torch.tensor(kernel.T.copy())
            dense.bias.data = torch.tensor(bias)
            modules.append(dense)
            activation = config.get("activation", "linear")
        elif kind == "Activation":
            activation = config["activation"]
        elif kind == "MaxPooling2D":
            modules.append(nn.MaxPool2d(config["pool_size"]))
            activation = "linear"
        elif kind == "Flatten":
            modules.append(_NHWCFlatten())
            activation = "linear"
        else:
            raise ValueError(
                f"No PyTorch equivalent for layer {layer.name!r} ({kind}); "
                "expected Conv2D, Dense, Activation, MaxPooling2D, Flatten."
            )
        if activation == "relu":
            modules.append(nn.ReLU())
        elif activation != "linear":
            raise ValueError(f"Unsupported activation {activation!r}.")
    return nn.Sequential(*modules)


def _kd(teacher_logits, student_logits):
    log_p = F.log_softmax(teacher_logits / TEMPERATURE, dim=-1)
    log_q = F.log_softmax(student_logits / TEMPERATURE, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return kl * TEMPERATURE**2


def _normalize(rows):
    return rows * torch.rsqrt(
        torch.clamp((rows * rows).sum(-1, keepdim=True), min=1e-12)
    )


def describe(threads):
    return f"torch {torch.__version__} with {threads} threads"


def make_steps(keras_teacher, keras_student, x, y, threads, seed=0):
    """Returns {"torch_activation": step, "torch_jacobian_top1": step}.

    Args:
        keras_teacher: the Keras teacher (converted, weights copied).
        keras_student: the Keras student (converted once per step kind).
        x: NumPy batch, NHWC.
        y: NumPy integer labels.
        threads: `torch.set_num_threads` value (TensorFlow's count).
        seed: torch seed.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    inputs = torch.tensor(np.transpose(x, (0, 3, 1, 2))).contiguous()
    labels = torch.tensor(y, dtype=torch.long)
    teacher = to_torch(keras_teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def optimizer(student):
        return torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    student_a = to_torch(keras_student)
    opt_a = optimizer(student_a)

    def activation_step():
        with torch.no_grad():
            t = teacher(inputs)
        s = student_a(inputs)
        loss = F.cross_entropy(s, labels) + _kd(t, s)
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()
        return float(loss.detach())

    student_j = to_torch(keras_student)
    opt_j = optimizer(student_j)

    def jacobian_step():
        xg = inputs.clone().requires_grad_(True)
        t = teacher(xg)
        top1 = t.argmax(-1, keepdim=True)
        (t_rows,) = torch.autograd.grad(t.gather(1, top1).sum(), xg)
        s = student_j(xg)
        (s_rows,) = torch.autograd.grad(
            s.gather(1, top1).sum(), xg, create_graph=True
        )
        diff = _normalize(t_rows.flatten(1)) - _normalize(s_rows.flatten(1))
        jacobian = (diff * diff).sum(-1).mean()
        loss = F.cross_entropy(s, labels) + _kd(t.detach(), s) + jacobian
        opt_j.zero_grad(set_to_none=True)
        loss.backward()
        opt_j.step()
        return float(loss.detach())

    steps = {
        "torch_activation": activation_step,
        "torch_jacobian_top1": jacobian_step,
    }
    for scheme in ("jvp", "fwd", "fd"):
        steps[f"torch_jacobian_{scheme}1"] = _projection_step(
            scheme, teacher, to_torch(keras_student), optimizer, inputs, labels
        )
    return steps


# Relative steps of the Keras defaults in float32 (jacobians/differences.py).
_RELATIVE_STEPS = {"fwd": 2.4e-4, "fd": 4e-3}


def _projection_step(scheme, teacher, student, optimizer, inputs, labels):
    """One step matching `J v` along one random input direction."""
    opt = optimizer(student)
    batch = inputs.shape[0]
    size = inputs[0].numel()

    def step():
        v = torch.randn_like(inputs)
        v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        if scheme == "jvp":
            with torch.no_grad():
                t, t_dir = torch.func.jvp(teacher, (inputs,), (v,))
            s, s_dir = torch.func.jvp(student, (inputs,), (v,))
        else:
            eps = _RELATIVE_STEPS[scheme] * inputs.flatten(1).norm(dim=1)
            shift = eps.view(-1, 1, 1, 1) * v
            if scheme == "fwd":
                stacked = torch.cat([inputs, inputs + shift])
            else:
                stacked = torch.cat([inputs, inputs + shift, inputs - shift])
            with torch.no_grad():
                t_all = teacher(stacked)
            s_all = student(stacked)
            t, s = t_all[:batch], s_all[:batch]
            if scheme == "fwd":
                t_dir = (t_all[batch:] - t) / eps[:, None]
                s_dir = (s_all[batch:] - s) / eps[:, None]
            else:
                scale = 2 * eps[:, None]
                t_dir = (t_all[batch : 2 * batch] - t_all[2 * batch :]) / scale
                s_dir = (s_all[batch : 2 * batch] - s_all[2 * batch :]) / scale
        jacobian = size * ((t_dir - s_dir) ** 2).sum(-1).mean()
        loss = F.cross_entropy(s, labels) + _kd(t, s) + jacobian
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step
