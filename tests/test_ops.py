"""Every op checked against two independent references, in float64, on random shapes.

(a) its VJP against centred finite differences (``numerical_vjp``): normwise relative error
    <= 1e-6 for every input and parameter (expected ~1e-9; shapes kept tiny).
(b) forward and every gradient against the PyTorch twin (``minicoat.oracle``): <= 1e-10
    (expected ~1e-15: the same math, summed in a different order).

Both run on the readable and the fast implementation; that the traced one agrees with them to
1e-12 is ``test_implementations.py``. Plus: float32 in gives float32 out and float32 gradients
(all three implementations); BatchNorm's running statistics; max pooling with ties; the
relative position index; the oracle's own converters. The cases are in ``op_cases.py``.
"""

from collections import defaultdict

import autograd
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_cases import CASES, Gen, autograd_vjp

import minicoat as mc
from minicoat import oracle
from minicoat.oracle import FEATURE_MAP
from minicoat.testing import vjpcheck

FD_TOL = 1e-6  # (a) ours vs finite differences
TORCH_TOL = 1e-10  # (b) ours vs the PyTorch twin
TIES_TOL = 1e-12  # max pooling with ties vs torch: the same first maximum

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)

# Worst error seen per (check, op), for the summary printed by tools or a curious reader.
WORST = defaultdict(float)


def check_close(check, op, what, ours, theirs, tol, theirs_name):
    """Assert ``rel_error(ours, theirs) <= tol`` with a message showing both sides."""
    err = mc.rel_error(ours, theirs)
    WORST[check, op] = max(WORST[check, op], err)
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert err <= tol, (
        f"({check}) {op}, {what}: rel_error(ours, {theirs_name}) = {err:.2e} > {tol:.0e}; "
        f"max |ours - {theirs_name}| = {np.max(np.abs(ours - theirs), initial=0):.2e}, "
        f"|ours| = {np.linalg.norm(ours):.3e}, |{theirs_name}| = {np.linalg.norm(theirs):.3e}"
    )


# ----------------------------------------------------------------------------------------
# (a), (b) and dtype, for every op, in the readable and the fast implementation
# ----------------------------------------------------------------------------------------

CHECKED = ["readable", "fast"]  # traced is the reference both are held to (test_implementations)


def vjp_in(impl, fn):
    """The VJP of ``fn(**inputs)`` that autograd runs in ``impl``, as ``vjp(upstream, inputs)``:
    the hand-written backward passes of the readable tier, or the fast kernels'."""

    def vjp(upstream, inputs):
        with mc.implementation(impl):
            return autograd.make_vjp(lambda values: fn(**values))(inputs)[0](upstream)

    return vjp


@pytest.mark.parametrize("impl", CHECKED)
@pytest.mark.parametrize("op", list(CASES))
@SETTINGS
@given(data=st.data())
def test_gradients_match_finite_differences(op, impl, data):
    """(a) every input's VJP vs centred differences, entry by entry within the error budget
    (``minicoat.testing.vjpcheck``), and normwise rel error <= 1e-6."""
    case = CASES[op](Gen(data, max_size=4))
    report = vjpcheck(lambda inputs: case.ours(**inputs), vjp_in(impl, case.ours),
                      dict(case.inputs), mode="elementwise")
    for leaf in report.leaves:
        WORST["a", op] = max(WORST["a", op], leaf.rel_error)
        assert leaf.rel_error <= FD_TOL, (
            f"(a) {op}, {impl} d/d{leaf.name}: rel_error(ours, finite differences) = "
            f"{leaf.rel_error:.2e} > {FD_TOL:.0e}\n{report}")


@pytest.mark.parametrize("impl", CHECKED)
@pytest.mark.parametrize("op", list(CASES))
@SETTINGS
@given(data=st.data())
def test_matches_torch(op, impl, data):
    """(b) forward and every input's gradient vs the PyTorch twin, rel error <= 1e-10."""
    case = CASES[op](Gen(data, max_size=6))
    with mc.implementation(impl):
        result = oracle.compare(case.ours, case.theirs, case.inputs, case.layouts, case.output)
    WORST["b", op] = max(WORST["b", op], result.worst)
    grads = ", ".join(f"d/d{name} {err:.2e}" for name, err in result.grads.items())
    assert result.worst <= TORCH_TOL, (
        f"(b) {op} ({impl}): rel_error(ours, torch) > {TORCH_TOL:.0e}: forward "
        f"{result.forward:.2e}, {grads}"
    )


@pytest.mark.parametrize("impl", mc.ops.IMPLEMENTATIONS)
@pytest.mark.parametrize("op", list(CASES))
@settings(SETTINGS, max_examples=3)
@given(data=st.data())
def test_float32_stays_float32(op, impl, data):
    """float32 inputs give a float32 output and float32 gradients for every input."""
    case = CASES[op](Gen(data, dtype=np.float32))
    with mc.implementation(impl):
        y, grads, _ = autograd_vjp(case.ours, case.inputs)
    assert y.dtype == np.float32, f"{op} ({impl}): float32 inputs gave a {y.dtype} output"
    for name in case.inputs:
        dtype = np.asarray(grads[name]).dtype
        assert dtype == np.float32, f"{op} ({impl}): d/d{name} is {dtype} for float32 inputs"


# ----------------------------------------------------------------------------------------
# Checks particular to one op
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", CHECKED)
@SETTINGS
@given(data=st.data())
def test_max_pool2d_gradient_with_ties_matches_torch(impl, data):
    """Max pooling with many ties: the gradient goes to the same (first) maximum as torch's,
    rel error <= 1e-12 (finite differences cannot check ties; traced autograd splits it)."""
    g = Gen(data, max_size=7)
    shape = (g.batch(), g.size(), g.size(), g.channels())
    x = g.rng.integers(0, 3, shape).astype(np.float64)  # values 0, 1, 2: ties everywhere
    with mc.implementation(impl):
        result = oracle.compare(
            mc.max_pool2d, oracle.max_pool2d, {"x": x}, {"x": FEATURE_MAP}, FEATURE_MAP
        )
    WORST["ties", "max_pool2d"] = max(WORST["ties", "max_pool2d"], result.worst)
    assert result.worst <= TIES_TOL, (
        f"max_pool2d ({impl}) with ties: rel_error(ours, torch) forward {result.forward:.2e}, "
        f"d/dx {result.grads['x']:.2e} > {TIES_TOL:.0e}"
    )


@pytest.mark.parametrize("impl", mc.ops.IMPLEMENTATIONS)
@SETTINGS
@given(data=st.data(), train=st.booleans())
def test_batch_norm_running_statistics_match_torch(impl, data, train):
    """One call updates the running statistics as torch's F.batch_norm(momentum=0.1) does
    (unbiased variance), in training mode; evaluation mode returns them unchanged. <= 1e-10."""
    g = Gen(data, max_size=5)
    n, h, wd, c = g.batch() + 1, g.size(), g.size(), g.channels()
    x = g.normal(n, h, wd, c, scale=2.0) + 1
    gamma, beta = g.normal(c), g.normal(c)
    running = {"mean": g.normal(c), "var": g.positive(c)}
    with mc.implementation(impl):
        _, new_running = mc.batch_norm(x, gamma, beta, running, train)
    _, torch_running = oracle.batch_norm(
        oracle.nhwc_to_nchw(x),
        oracle.array_to_torch(gamma),
        oracle.array_to_torch(beta),
        {key: oracle.array_to_torch(value) for key, value in running.items()},
        train,
    )
    for key in ("mean", "var"):
        theirs = oracle.to_numpy(torch_running[key])
        check_close("b", "batch_norm running", key, new_running[key], theirs, TORCH_TOL, "torch")
        if not train:
            np.testing.assert_array_equal(new_running[key], running[key])
    # float32 state stays float32
    as32 = {key: value.astype(np.float32) for key, value in running.items()}
    with mc.implementation(impl):
        _, running32 = mc.batch_norm(*(a.astype(np.float32) for a in (x, gamma, beta)), as32,
                                     train)
    dtypes = {key: value.dtype for key, value in running32.items()}
    assert set(dtypes.values()) == {np.dtype(np.float32)}, f"float32 state became {dtypes}"


def _brute_force_index(h, w):
    """The definition, one pair of tokens at a time."""
    tokens = [(y, x) for y in range(h) for x in range(w)]  # row-major
    index = np.empty((h * w, h * w), dtype=np.int64)
    for i, (yi, xi) in enumerate(tokens):
        for j, (yj, xj) in enumerate(tokens):
            index[i, j] = (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    return index


@pytest.mark.parametrize("h, w", [(1, 1), (1, 4), (3, 1), (2, 3), (4, 4), (3, 5)])
def test_relative_position_index_matches_brute_force_and_torch(h, w):
    ours = mc.relative_position_index(h, w)
    assert ours.shape == (h * w, h * w) and ours.dtype == np.int64, f"{ours.shape} {ours.dtype}"
    brute = _brute_force_index(h, w)
    assert np.array_equal(ours, brute), f"ours:\n{ours}\nbrute force:\n{brute}"
    theirs = oracle.to_numpy(oracle.relative_position_index(h, w))
    assert np.array_equal(ours, theirs), f"ours:\n{ours}\ntorch oracle:\n{theirs}"


@SETTINGS
@given(h=st.integers(1, 7), w=st.integers(1, 7))
def test_relative_position_index_properties(h, w):
    index = mc.relative_position_index(h, w)
    table = (2 * h - 1) * (2 * w - 1)
    # every offset occurs, so the values are exactly 0 .. table-1
    assert np.array_equal(np.unique(index), np.arange(table)), (
        f"values {np.unique(index)} != range({table})"
    )
    # the offset j - i is minus the offset i - j: index[i,j] + index[j,i] == 2 * index[i,i]
    diagonal = np.diag(index)
    assert np.all(diagonal == diagonal[0]), f"diagonal not constant: {diagonal}"
    assert np.array_equal(index + index.T, np.full_like(index, 2 * diagonal[0])), (
        f"index + index.T:\n{index + index.T}\nexpected all {2 * diagonal[0]}"
    )


# ----------------------------------------------------------------------------------------
# The oracle itself
# ----------------------------------------------------------------------------------------

# layout, NumPy shape, torch shape (all axes of distinct sizes), one element on each side
LAYOUTS = {
    "PLAIN": (oracle.PLAIN, (2, 3), (2, 3), (1, 2), (1, 2)),
    "FEATURE_MAP": (oracle.FEATURE_MAP, (2, 3, 4, 5), (2, 5, 3, 4), (1, 2, 3, 4), (1, 4, 2, 3)),
    "DEPTHWISE_KERNEL": (oracle.DEPTHWISE_KERNEL, (3, 2, 4), (4, 1, 3, 2), (2, 1, 3), (3, 0, 2, 1)),
    "CONV_KERNEL": (oracle.CONV_KERNEL, (3, 2, 4, 5), (5, 4, 3, 2), (2, 1, 3, 4), (4, 3, 2, 1)),
    "POINTWISE_KERNEL": (oracle.POINTWISE_KERNEL, (4, 5), (5, 4, 1, 1), (3, 4), (4, 3, 0, 0)),
    "LINEAR_WEIGHT": (oracle.LINEAR_WEIGHT, (4, 5), (5, 4), (3, 4), (4, 3)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layout_converters(name, dtype):
    """Each converter moves the axes as documented, keeps the dtype, and has an exact inverse."""
    layout, numpy_shape, torch_shape, numpy_index, torch_index = LAYOUTS[name]
    a = np.random.default_rng(0).standard_normal(numpy_shape).astype(dtype)
    t = layout.to_torch(a)
    assert tuple(t.shape) == torch_shape, f"{name}: torch shape {tuple(t.shape)} != {torch_shape}"
    assert t.dtype == torch.from_numpy(a).dtype, f"{name}: {a.dtype} became {t.dtype}"
    assert t[torch_index].item() == a[numpy_index], f"{name}: t{torch_index} != a{numpy_index}"
    back = layout.to_numpy(t)
    assert back.dtype == dtype and np.array_equal(back, a), f"{name}: round trip changed values"


def test_compare_catches_a_wrong_op():
    """The oracle can fail: tanh-GELU is not exact GELU (differs by ~1e-4 relative)."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    result = oracle.compare(lambda x: mc.gelu(x, "tanh"), oracle.gelu, {"x": x})
    assert result.forward > 1e-6 and result.grads["x"] > 1e-6, f"not caught: {result}"
