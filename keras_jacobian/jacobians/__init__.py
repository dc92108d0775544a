"""Where input Jacobians are computed.

Every Jacobian in the library is a set of vector-Jacobian products
`v^T dF/dx`, one per row (`rows`), or directional derivatives `J v`
along random input directions `v` (`directions`), by forward mode or by
differences of forward passes (`directional`, `differences`), with
`directional_distance` turning them into an unbiased estimate of
`||J_T - J_S||_F^2`.

- `rows.py`: rows by reverse mode, flattened and normalised.
- `resolution.py`: the teacher's rows resampled to the student's grid.
- `directions.py`: the random input directions and the estimate.
- `directional.py`: `J v` by forward mode, or dispatched to differences.
- `differences.py`: central and one-sided differences and their steps.
- `precision.py`: the float precision a network computes in.

Every name is importable from `keras_jacobian.jacobians`.
"""

from keras_jacobian.jacobians.differences import BATCH_FLOOR
from keras_jacobian.jacobians.differences import FORWARD_RELATIVE_STEPS
from keras_jacobian.jacobians.differences import MIN_INPUT_RMS
from keras_jacobian.jacobians.differences import MIN_RELATIVE_STEP
from keras_jacobian.jacobians.differences import RELATIVE_STEPS
from keras_jacobian.jacobians.differences import UNIT_ROUNDOFF
from keras_jacobian.jacobians.differences import central_differences
from keras_jacobian.jacobians.differences import check_resolvable_steps
from keras_jacobian.jacobians.differences import finite_difference_step
from keras_jacobian.jacobians.differences import forward_differences
from keras_jacobian.jacobians.directional import directional_derivatives
from keras_jacobian.jacobians.directional import jvp
from keras_jacobian.jacobians.directions import DIFFERENCE_ESTIMATORS
from keras_jacobian.jacobians.directions import ESTIMATORS
from keras_jacobian.jacobians.directions import INPUT_ESTIMATORS
from keras_jacobian.jacobians.directions import directional_distance
from keras_jacobian.jacobians.directions import input_directions
from keras_jacobian.jacobians.directions import input_size
from keras_jacobian.jacobians.directions import orthogonal_directions
from keras_jacobian.jacobians.precision import compute_precision
from keras_jacobian.jacobians.precision import network_precision
from keras_jacobian.jacobians.resolution import known_shape
from keras_jacobian.jacobians.resolution import match_spatial_size
from keras_jacobian.jacobians.rows import FLOAT16_COTANGENT_SCALE
from keras_jacobian.jacobians.rows import MAX_VECTORIZED_ROWS
from keras_jacobian.jacobians.rows import NORM_EPSILON
from keras_jacobian.jacobians.rows import flatten_rows
from keras_jacobian.jacobians.rows import normalize_rows
from keras_jacobian.jacobians.rows import unit_vectors
from keras_jacobian.jacobians.rows import vjp_rows

__all__ = [
    "BATCH_FLOOR",
    "DIFFERENCE_ESTIMATORS",
    "ESTIMATORS",
    "FLOAT16_COTANGENT_SCALE",
    "FORWARD_RELATIVE_STEPS",
    "INPUT_ESTIMATORS",
    "MAX_VECTORIZED_ROWS",
    "MIN_INPUT_RMS",
    "MIN_RELATIVE_STEP",
    "NORM_EPSILON",
    "RELATIVE_STEPS",
    "UNIT_ROUNDOFF",
    "central_differences",
    "check_resolvable_steps",
    "compute_precision",
    "directional_derivatives",
    "directional_distance",
    "finite_difference_step",
    "flatten_rows",
    "forward_differences",
    "input_directions",
    "input_size",
    "jvp",
    "known_shape",
    "match_spatial_size",
    "network_precision",
    "normalize_rows",
    "orthogonal_directions",
    "unit_vectors",
    "vjp_rows",
]
