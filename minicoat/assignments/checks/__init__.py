"""Autograded checks for the course assignments (see docs/teaching.md).

Each ``check_*`` function runs a student's function on small random float64 inputs and grades
it against two independent answers: minicoat's own implementation and the PyTorch oracle
(``minicoat.oracle``), plus finite differences where a gradient is written by hand. It returns
a one-line report on success and raises ``CheckFailed`` (an ``AssertionError``) whose message
says exactly what is wrong:

* ``not implemented yet: <hint>`` when the function still raises ``NotImplementedError``;
* ``wrong shape: expected (2, 3, 3, 3), got (2, 5, 6, 3)``;
* ``output: error 4.1e-01 vs PyTorch (pass mark 1e-10)``, where the largest difference is and
  the first few values, got vs expected;
* ``gradient w.r.t. w: error 3.1e-01 ...``: which gradient is wrong, and by how much;
* and, when the wrong answer matches a classic mistake (a flipped kernel, the softmax over
  the wrong axis, a missing scale, ...), which one.

Pass marks, float64, normwise relative error (``minicoat.rel_error``): 1e-10 against minicoat
and PyTorch (a correct answer lands near 1e-15: the same math in another order) and 1e-6
against finite differences (a correct gradient lands near 1e-9).

torch is imported only when a check gets as far as the oracle, so an unfinished notebook
fails fast.
"""

from .a1_depthwise import check_depthwise_forward, check_depthwise_vjp
from .a2_attention import check_relative_attention, check_relative_position_index
from .a3_mbconv import check_batch_norm_vjp, check_mbconv
from .a4_training import (
    check_adamw_update,
    check_loss_and_grad,
    check_overfit,
    check_training_step,
)
from .a5_transformer import (
    check_attention_core_vjp,
    check_layer_norm,
    check_layer_norm_vjp,
    check_transformer_block,
)
from .common import ADAMW as ADAMW  # constants: importable, not in the API reference
from .common import NUMERIC_TOL as NUMERIC_TOL
from .common import ORACLE_TOL as ORACLE_TOL
from .common import TRAINED_TOL as TRAINED_TOL
from .common import CheckFailed

__all__ = [
    "CheckFailed",
    "check_adamw_update", "check_depthwise_forward", "check_depthwise_vjp",
    "check_loss_and_grad", "check_mbconv", "check_overfit", "check_relative_attention",
    "check_relative_position_index", "check_training_step", "check_attention_core_vjp",
    "check_layer_norm", "check_layer_norm_vjp", "check_transformer_block",
    "check_batch_norm_vjp",
]
