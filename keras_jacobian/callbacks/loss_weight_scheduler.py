"""Changes the weight of a distillation term (or the student loss) by epoch."""

import bisect

import keras

from keras_jacobian import validation


def warmup(weight, epochs=1, delay=0):
    """Weight 0 for `delay` epochs, then a linear rise to `weight`.

    Epoch `e >= delay` gets `weight * min(1, (e - delay + 1) / epochs)`:
    with `epochs=1` the weight jumps from 0 to `weight` at epoch `delay`.

    Returns:
        A function `epoch -> weight`.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}"
        )

    def schedule(epoch):
        if epoch < delay:
            return 0.0
        return float(weight) * min(1.0, (epoch - delay + 1) / epochs)

    return schedule


def ramp(start, end, start_epoch, end_epoch):
    """Linear from `start` at `start_epoch` to `end` at `end_epoch`.

    Constant (`start`, `end`) before and after.

    Returns:
        A function `epoch -> weight`.
    """
    if end_epoch <= start_epoch:
        raise ValueError(
            "`end_epoch` must be greater than `start_epoch`. Received: "
            f"start_epoch={start_epoch!r}, end_epoch={end_epoch!r}"
        )

    def schedule(epoch):
        fraction = (epoch - start_epoch) / (end_epoch - start_epoch)
        fraction = min(1.0, max(0.0, fraction))
        return float(start) + fraction * (float(end) - float(start))

    return schedule


def step(boundaries, values):
    """Piecewise constant: `values[i]` from epoch `boundaries[i - 1]` on.

    `step([2, 5], [0.0, 1.0, 0.5])` is 0 for epochs 0-1, 1 for 2-4, then
    0.5.

    Returns:
        A function `epoch -> weight`.
    """
    boundaries = list(boundaries)
    values = [float(v) for v in values]
    if len(values) != len(boundaries) + 1 or boundaries != sorted(boundaries):
        raise ValueError(
            "`step` needs increasing `boundaries` and one more value than "
            f"boundaries. Received: boundaries={boundaries}, "
            f"values={values}"
        )

    def schedule(epoch):
        return values[bisect.bisect_right(boundaries, epoch)]

    return schedule


class LossWeightScheduler(keras.callbacks.Callback):
    """Sets the weight of one loss term of a `Distiller` at each epoch.

    Before each epoch, assigns `schedule(epoch)` to the term's weight
    variable (`distiller.term_weights[i]`), or for `term="student"` to
    the weight of the compiled loss, whichever the `Distiller` was built
    with: under Keras' convex mix (`student_loss_weight=w`) the schedule
    sets `w`, so the terms get `1 - w` at the same time, and values above
    1 are refused; with `supervised_loss_weight=s` it sets `s` alone. The
    weights are `keras.Variable`s read by the compiled step, so nothing is
    retraced; a weight of 0 skips the term at run time. The weight in use
    is added to the epoch's logs as `"<term name>_weight"` (for
    `"student"`: `"student_loss_weight"` or `"supervised_loss_weight"`, as
    the argument), so it appears in `History` and TensorBoard.

    Args:
        term: the term's name, its index in `distillation_losses`, or
            `"student"` for the compiled (supervised) loss.
        schedule: a function `epoch -> weight >= 0`, e.g. `warmup(1.0, 5)`,
            `ramp(0.0, 1.0, 2, 10)`, `step([5], [0.0, 1.0])`. A value that
            is not a finite number >= 0 (NaN, inf, an array) stops
            training with a `ValueError` naming the epoch.
        verbose: 1 prints each change.

    Example:

    ```python
    scheduler = keras_jacobian.callbacks.LossWeightScheduler(
        "jacobian_matching", keras_jacobian.callbacks.warmup(1.0, epochs=3)
    )
    distiller.fit(x, y, epochs=10, callbacks=[scheduler])
    ```
    """

    def __init__(self, term, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "`schedule` must be a function epoch -> weight. Received: "
                f"schedule={schedule!r}"
            )
        if isinstance(term, bool) or not isinstance(term, (str, int)):
            raise ValueError(
                "`term` must be a term name, an index or 'student'. "
                f"Received: term={term!r}"
            )
        self.term = term
        self.schedule = schedule
        self.verbose = verbose
        self.variable = None
        self.log_key = None

    def set_model(self, model):
        super().set_model(model)
        self.variable, self.log_key = self._resolve(model)

    def _resolve(self, model):
        terms = getattr(model, "distillation_losses", None)
        if terms is None:
            raise ValueError(
                "LossWeightScheduler works with a keras_jacobian.Distiller. "
                f"Received: {type(model).__name__}"
            )
        if self.term == "student":
            if model.student_loss_weight is not None:
                return None, "student_loss_weight"
            return None, "supervised_loss_weight"
        names = [t.name for t in terms]
        if isinstance(self.term, int):
            if not 0 <= self.term < len(terms):
                raise ValueError(
                    f"Term index {self.term} is out of range: the distiller "
                    f"has {len(terms)} terms {names}."
                )
            index = self.term
        elif self.term in names:
            index = names.index(self.term)
        else:
            raise ValueError(
                f"The distiller has no term named {self.term!r}. Available "
                f"terms: {names}, or 'student'."
            )
        return model.term_weights[index], f"{names[index]}_weight"

    def on_epoch_begin(self, epoch, logs=None):
        weight = validation.check_number(
            self.schedule(epoch),
            self.log_key,
            context=(
                f", the schedule's value at epoch {epoch} (0-based). "
                "The schedule must return a finite number >= 0"
            ),
        )
        if self.variable is not None:
            self.variable.assign(weight)
        else:
            if self.log_key == "student_loss_weight" and weight > 1.0:
                raise ValueError(
                    "This Distiller mixes its losses as Keras does "
                    "(`student_loss_weight=w`: w * student + (1 - w) * "
                    "terms), so the schedule of 'student' must stay in "
                    "[0, 1]. For an independent weight, build the "
                    "Distiller with `supervised_loss_weight`. Received: "
                    f"student_loss_weight={weight!r}, the schedule's value "
                    f"at epoch {epoch} (0-based)"
                )
            setattr(self.model, self.log_key, weight)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.log_key} = {weight:.4g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            variable = self.variable
            if variable is None:
                variable = self.model.student_loss_weight_variable
            logs[self.log_key] = float(keras.ops.convert_to_numpy(variable))
