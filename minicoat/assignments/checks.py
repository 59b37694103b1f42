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

import contextlib
import functools

import autograd
import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

import minicoat as mc

from .. import blocks
from ..model import init_from_spec
from ..optim import adamw_init, adamw_update, decay_mask
from ..plans import make_block
from ..tree import flatten, tree_map, unflatten

ORACLE_TOL = 1e-10  # against minicoat and PyTorch; expect ~1e-15
# Parameters after AdamW steps: Adam divides each gradient by its own size, so the round-off
# of a gradient that is zero in theory (e.g. the key bias, which softmax ignores) becomes a
# step of ~lr * 1e-17 / eps; measured ~1e-10 relative to the leaf. A mistake gives > 1e-4.
TRAINED_TOL = 1e-8
NUMERIC_TOL = 1e-6  # against finite differences; expect ~1e-9
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}  # the notebook's defaults


class CheckFailed(AssertionError):
    """A check found a wrong answer; the message says what, where and by how much."""


# -- calling student code -------------------------------------------------------------------


def _call(what, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a stub's ``NotImplementedError`` becomes a clear failure."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        hint = str(err) or "replace `raise NotImplementedError` with your code"
        raise CheckFailed(f"{what}: not implemented yet: {hint}") from None
    except CheckFailed:
        raise
    except Exception as err:
        raise CheckFailed(f"{what} raised {type(err).__name__}: {err}") from err


def _autograd_grad(what, objective, arg):
    """The gradient of a scalar function of the student's code, by autograd, or a clear failure."""
    try:
        return autograd.grad(objective)(arg)
    except Exception as err:
        raise CheckFailed(
            f"{what}: autograd could not differentiate your code ({type(err).__name__}: {err}). "
            "Write it with autograd.numpy (import autograd.numpy as np), without in-place "
            "assignment (a[i] = ...) and without np.copy"
        ) from err


def _snapshot(**trees):
    """Copies of the leaves of some input trees, to tell whether a function modified them."""
    return {name: {k: np.array(v, copy=True) for k, v in flatten(tree).items()}
            for name, tree in trees.items()}


def _require_unmodified(what, snapshot, **trees):
    """Fail if a student's function changed an input in place (functions here are pure)."""
    for name, tree in trees.items():
        flat = flatten(tree)
        for key, before in snapshot[name].items():
            if key not in flat or not np.array_equal(flat[key], before):
                raise CheckFailed(
                    f"{what} changed its input {name}[{key!r}] in place (p -= ..., d[k] = ..., "
                    f"d[k] += 1); return new arrays and dicts instead (p = p - ...): the caller "
                    f"still needs the old ones")


def _pair(what, result, names):
    """Check that a student's function returned a tuple of ``len(names)`` things."""
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        raise CheckFailed(
            f"{what} should return a tuple ({', '.join(names)}), got {type(result).__name__}"
        )
    return result


# -- comparing ------------------------------------------------------------------------------


def _plain(a):
    return np.asarray(getval(a))


def _head(a, n=4):
    return np.array2string(np.ravel(a)[:n], precision=5, separator=", ")


def _error(got, expected, floor=0.0):
    """Normwise relative error; a leaf whose true value is ~0 is measured against ``floor``."""
    scale = max(np.linalg.norm(got), np.linalg.norm(expected))
    if scale < 1e-8 * floor:  # e.g. a gradient that is exactly zero in theory
        scale = floor
    return 0.0 if scale == 0.0 else float(np.linalg.norm(got - expected) / scale)


def _mismatch(label, got, refs, suspects=None, floor=0.0):
    """None if ``got`` agrees with every reference, else one line saying how it differs.

    Args:
        label: what is compared, e.g. "output" or "gradient w.r.t. w".
        got: the student's array.
        refs: ``[(source, expected, pass mark), ...]``; the first is quoted for values.
        suspects: description -> the array a classic mistake gives; named if it matches.
        floor: norm of the whole tree ``got`` belongs to (see ``_error``).
    """
    expected = refs[0][1]
    try:
        got = _plain(got)
    except Exception:
        return f"{label}: expected an array, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"{label}: wrong shape: expected {expected.shape}, got {got.shape}"
    if got.dtype != expected.dtype:
        return f"{label}: wrong dtype: expected {expected.dtype}, got {got.dtype}"
    if not np.all(np.isfinite(got)):
        return f"{label}: {np.sum(~np.isfinite(got))} of {got.size} values are NaN or inf"
    errors = [(source, _error(got, ref, floor), tol) for source, ref, tol in refs]
    failed = [f"{e:.1e} vs {source} (pass mark {tol:.0e})" for source, e, tol in errors if e > tol]
    if not failed:
        return None
    diff = np.abs(got - expected)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
    message = (
        f"{label}: error {', '.join(failed)}; largest difference at index {worst}: "
        f"got {got[worst]:.6g}, expected {expected[worst]:.6g}; first values: "
        f"got {_head(got)}, expected {_head(expected)}"
    )
    for description, suspect in (suspects or {}).items():
        if suspect.shape == got.shape and _error(got, suspect) < 1e-8:
            return f"{message}. It matches {description}"
    return message


def _require(context, problems, limit=6):
    """Raise ``CheckFailed`` listing the problems (None entries are passes)."""
    problems = [p for p in problems if p]
    if problems:
        more = len(problems) - limit
        lines = problems[:limit] + ([f"... and {more} more"] if more > 0 else [])
        raise CheckFailed(f"{context}:\n  " + "\n  ".join(lines))


def _tree_mismatches(prefix, got, refs, suspects=None):
    """``_mismatch`` for every leaf of a tree; ``refs`` holds (source, tree, tol)."""
    flat_refs = [(source, flatten(tree), tol) for source, tree, tol in refs]
    expected = flat_refs[0][1]
    try:
        got = flatten(got)
    except Exception:
        return [f"{prefix}: expected a nested dict like the parameters, got {type(got).__name__}"]
    if got.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        return [f"{prefix}: wrong keys: missing {missing[:5]}, unexpected {extra[:5]}"]
    floor = np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in expected.values()))
    flat_suspects = {d: flatten(tree) for d, tree in (suspects or {}).items()}
    return [
        _mismatch(
            f"{prefix}{key}",
            got[key],
            [(source, np.asarray(tree[key]), tol) for source, tree, tol in flat_refs],
            {d: s[key] for d, s in flat_suspects.items()},
            floor,
        )
        for key in expected
    ]


def _zeros_suspect(tree):
    return {"zero: no gradient flows back (plain NumPy instead of autograd.numpy?)": tree}


# -- the oracle -----------------------------------------------------------------------------


def _oracle():
    """torch, the op twins and the network twins (imported on first use: torch is slow)."""
    import torch

    from ..oracle import network, ops

    return torch, ops, network


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch on one thread, then restore the caller's setting.

    The oracle's tensors are tiny; on a busy machine, OpenMP synchronisation between threads
    was measured to cost up to a second per op (against ~1 ms on one thread).
    """
    torch = _oracle()[0]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _shape_text(**arrays):
    return ", ".join(f"{name} {tuple(np.shape(a))}" for name, a in arrays.items())


# ===========================================================================================
# A1: depthwise convolution
# ===========================================================================================


@_one_torch_thread()
def _torch_depthwise(x, w, g, stride):
    """PyTorch's output and the gradients of ``sum(y * g)`` w.r.t. x and w, channels-last."""
    torch, ops, _ = _oracle()
    x_t = ops.nhwc_to_nchw(x).requires_grad_()
    w_t = ops.depthwise_kernel_to_torch(w).requires_grad_()
    y_t = ops.depthwise_conv2d(x_t, w_t, stride)
    if g is None:
        return ops.nchw_to_nhwc(y_t)
    y_t.backward(ops.nhwc_to_nchw(g))
    return ops.nchw_to_nhwc(x_t.grad), ops.depthwise_kernel_from_torch(w_t.grad)


def check_depthwise_forward(student_fn, shape=(2, 5, 6, 3), k=3, stride=1, seed=0):
    """Grade ``student_fn(x, w, stride) -> y``, a depthwise k x k convolution, "same" padding.

    Compared with ``mc.depthwise_conv2d`` and PyTorch's ``F.conv2d(groups=C)``.
    """
    rng = np.random.default_rng(seed)
    x, w = _normal(rng, shape), _normal(rng, (k, k, shape[-1]))
    context = f"depthwise_conv2d({_shape_text(x=x, w=w)}, stride={stride})"
    got = _call(context, student_fn, x, w, stride)
    theirs = _torch_depthwise(x, w, None, stride)
    suspects = {}
    if k > 1:
        flipped = mc.depthwise_conv2d(x, np.ascontiguousarray(w[::-1, ::-1]), stride)
        suspects["the convolution with the kernel flipped: like PyTorch's, this layer is a "
                 "cross-correlation, y[i] = sum_d w[d] x_pad[i + d]; do not flip w"] = flipped
    refs = [("PyTorch", theirs, ORACLE_TOL), ("minicoat", mc.depthwise_conv2d(x, w, stride),
                                              ORACLE_TOL)]
    _require(context, [_mismatch("output", got, refs, suspects)])
    return f"{context}: forward OK (error {_error(_plain(got), theirs):.0e} vs PyTorch)"


def check_depthwise_vjp(student_vjp_fn, shape=(2, 5, 6, 3), k=3, stride=1, seed=0):
    """Grade ``student_vjp_fn(x, w, g, stride) -> (dx, dw)``, the hand-written backward pass.

    ``dx`` and ``dw`` are the gradients of ``sum(depthwise_conv2d(x, w, stride) * g)``;
    compared with PyTorch's autograd, minicoat's hand-written VJP and finite differences.
    """
    rng = np.random.default_rng(seed)
    x, w = _normal(rng, shape), _normal(rng, (k, k, shape[-1]))
    g = _normal(rng, mc.depthwise_conv2d(x, w, stride).shape)
    context = f"depthwise_conv2d_vjp({_shape_text(x=x, w=w, g=g)}, stride={stride})"
    dx, dw = _pair(context, _call(context, student_vjp_fn, x, w, g, stride), ("dx", "dw"))
    dx_torch, dw_torch = _torch_depthwise(x, w, g, stride)
    dx_mc, dw_mc = autograd.grad(
        lambda xw: anp.sum(mc.depthwise_conv2d(xw[0], xw[1], stride) * g))((x, w))
    dx_num = mc.numerical_vjp(lambda x_: mc.depthwise_conv2d(x_, w, stride), x, g)
    dw_num = mc.numerical_vjp(lambda w_: mc.depthwise_conv2d(x, w_, stride), w, g)
    suspects_x = {}
    if stride == 1 and k > 1:
        suspects_x["the kernel not flipped: the backward of a cross-correlation is a "
                   "convolution, dx = depthwise_conv2d(g, w[::-1, ::-1]) for stride 1"] = (
            mc.depthwise_conv2d(g, w, 1))
    problems = [
        _mismatch("gradient w.r.t. x", dx, [("PyTorch", dx_torch, ORACLE_TOL),
                                            ("minicoat", dx_mc, ORACLE_TOL),
                                            ("finite differences", dx_num, NUMERIC_TOL)],
                  {**suspects_x, **_zeros_suspect(np.zeros_like(x))}),
        _mismatch("gradient w.r.t. w", dw, [("PyTorch", dw_torch, ORACLE_TOL),
                                            ("minicoat", dw_mc, ORACLE_TOL),
                                            ("finite differences", dw_num, NUMERIC_TOL)],
                  {"the kernel gradient flipped (w[::-1, ::-1])": dw_torch[::-1, ::-1]}),
    ]
    _require(context, problems)
    return (f"{context}: backward OK (errors vs PyTorch: dx {_error(_plain(dx), dx_torch):.0e}, "
            f"dw {_error(_plain(dw), dw_torch):.0e}; vs finite differences "
            f"{max(_error(_plain(dx), dx_num), _error(_plain(dw), dw_num)):.0e})")


# ===========================================================================================
# A2: relative attention
# ===========================================================================================


def check_relative_position_index(student_fn, h=2, w=3):
    """Grade ``student_fn(h, w) -> (h*w, h*w)`` integer relative-position index."""
    _, ops, _ = _oracle()
    context = f"relative_position_index({h}, {w})"
    got = _call(context, student_fn, h, w)
    expected = ops.relative_position_index(h, w).numpy()
    if not np.array_equal(mc.relative_position_index(h, w), expected):  # pragma: no cover
        raise RuntimeError("minicoat and the oracle disagree: report this bug")
    got = _plain(got)
    if got.shape != expected.shape:
        raise CheckFailed(f"{context}: wrong shape: expected {expected.shape}, got {got.shape}")
    if not np.issubdtype(got.dtype, np.integer):
        raise CheckFailed(f"{context}: expected an integer array (for indexing), got {got.dtype}")
    wrong = np.argwhere(got != expected)
    if len(wrong):
        i, j = (int(a) for a in wrong[0])
        message = (
            f"{context}: {len(wrong)} of {got.size} entries wrong; first at [{i}, {j}] (token "
            f"{divmod(i, w)} vs token {divmod(j, w)} as (row, col)): got {got[i, j]}, "
            f"expected {expected[i, j]}"
        )
        if np.array_equal(got, expected.T):
            message += ". It matches the transpose: the offset is (token i) - (token j)"
        raise CheckFailed(message)
    return f"{context}: OK ({got.size} entries, values 0..{expected.max()})"


def _attention_variant(x, p, heads, variant, scale=True, axis=-1, transpose_bias=False):
    """Plain NumPy relative attention with one thing changed: recognises classic mistakes."""
    n, h, w, c = x.shape
    qkv = x.reshape(n, h * w, c) @ p["w_qkv"] + p["b_qkv"]  # (N, T, 3D)
    q, k, v = (t.reshape(n, h * w, heads, -1).transpose(0, 2, 1, 3)
               for t in np.split(qkv, 3, axis=-1))  # each (N, heads, T, d)
    index = mc.relative_position_index(h, w)
    bias = p["rel_bias"][:, index.T if transpose_bias else index]  # (heads, T, T)
    logits = q @ k.transpose(0, 1, 3, 2) * (q.shape[-1] ** -0.5 if scale else 1.0)

    def softmax(s):
        e = np.exp(s - s.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    weights = softmax(logits + bias) if variant == "pre" else softmax(logits) + bias
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(n, h * w, -1)  # (N, T, D)
    return (out @ p["w_out"] + p["b_out"]).reshape(n, h, w, -1)


@_one_torch_thread()
def _torch_attention(x, p, heads, variant, g):
    """PyTorch's output and gradients of ``sum(y * g)`` w.r.t. x and p, in our layouts."""
    torch, ops, _ = _oracle()
    layouts = {"w_qkv": ops.LINEAR_WEIGHT, "w_out": ops.LINEAR_WEIGHT}
    x_t = ops.nhwc_to_nchw(x).requires_grad_()
    p_t = {k: layouts.get(k, ops.PLAIN).to_torch(v).requires_grad_() for k, v in p.items()}
    y_t = ops.relative_attention(x_t, p_t, heads, variant)
    y_t.backward(ops.nhwc_to_nchw(g))
    grads = {k: layouts.get(k, ops.PLAIN).to_numpy(t.grad) for k, t in p_t.items()}
    return ops.nchw_to_nhwc(y_t), ops.nchw_to_nhwc(x_t.grad), grads


def check_relative_attention(student_fn, variant="pre", shape=(2, 3, 4, 8), heads=2, dim=8,
                             c_out=6, seed=0):
    """Grade ``student_fn(x, p, heads, variant) -> y``, 2-D relative self-attention.

    Forward and the gradients (by autograd through the student's code) w.r.t. x and every
    parameter, compared with PyTorch and ``mc.relative_attention``.
    """
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    x = _normal(rng, shape)
    p = {
        "w_qkv": _normal(rng, (c, 3 * dim), c**-0.5),
        "b_qkv": _normal(rng, (3 * dim,), 0.1),
        "w_out": _normal(rng, (dim, c_out), dim**-0.5),
        "b_out": _normal(rng, (c_out,), 0.1),
        "rel_bias": _normal(rng, (heads, (2 * h - 1) * (2 * w - 1)), 0.5),
    }
    context = (f"relative_attention(x {shape}, heads={heads}, D={dim}, C_out={c_out}, "
               f"variant={variant!r})")
    got = _call(context, student_fn, x, p, heads, variant)
    g = _normal(rng, (n, h, w, c_out))
    y_torch, dx_torch, dp_torch = _torch_attention(x, p, heads, variant, g)
    other = "post" if variant == "pre" else "pre"
    suspects = {
        f"the {other!r} variant (pre: softmax(qk^T/sqrt(d) + B); post: softmax(qk^T/sqrt(d)) + B)":
            _attention_variant(x, p, heads, other),
        "attention without the 1/sqrt(d) scale of the logits":
            _attention_variant(x, p, heads, variant, scale=False),
        "the softmax over the queries (axis -2) instead of over the keys (axis -1)":
            _attention_variant(x, p, heads, variant, axis=-2),
        "the bias transposed (B[j, i] instead of B[i, j])":
            _attention_variant(x, p, heads, variant, transpose_bias=True),
    }
    refs = [("PyTorch", y_torch, ORACLE_TOL),
            ("minicoat", mc.relative_attention(x, p, heads, variant), ORACLE_TOL)]
    _require(context, [_mismatch("output", got, refs, suspects)])

    dx, dp = _autograd_grad(
        context, lambda xp: anp.sum(student_fn(xp[0], xp[1], heads, variant) * g), (x, p))
    dx_mc, dp_mc = autograd.grad(
        lambda xp: anp.sum(mc.relative_attention(xp[0], xp[1], heads, variant) * g))((x, p))
    problems = [_mismatch("gradient w.r.t. x", dx, [("PyTorch", dx_torch, ORACLE_TOL),
                                                   ("minicoat", dx_mc, ORACLE_TOL)],
                          _zeros_suspect(np.zeros_like(x)))]
    refs = [("PyTorch", dp_torch, ORACLE_TOL), ("minicoat", dp_mc, ORACLE_TOL)]
    problems += _tree_mismatches("gradient w.r.t. p.", dp, refs,
                                 _zeros_suspect(tree_map(np.zeros_like, p)))
    _require(context, problems)
    return (f"{context}: forward and gradients OK (error {_error(_plain(got), y_torch):.0e} vs "
            "PyTorch)")


# ===========================================================================================
# A3: MBConv
# ===========================================================================================


def _random_mbconv(rng, block, cfg):
    """MBConv parameters and BatchNorm state with every leaf perturbed (no hiding 0s and 1s)."""
    spec = blocks.mbconv_spec(block)
    params = init_from_spec(spec, rng, np.float64)
    params = unflatten({
        k: v + (0.2 if k.endswith("gamma") else 0.1) * rng.standard_normal(v.shape)
        if not k.rsplit(".", 1)[-1].startswith("w") else v
        for k, v in flatten(params).items()
    })
    state = {
        name: {"mean": _normal(rng, (ch,), 0.1), "var": 1.0 + rng.uniform(0.0, 0.5, ch)}
        for name, ch in blocks.mbconv_state(block).items()
    }
    return params, state


@_one_torch_thread()
def _torch_mbconv(params, state, x, block, cfg, train, g):
    torch, ops, network = _oracle()
    module = network.copy_into(network.MBConv(block, cfg).double(), params, state)
    module.train(train)
    x_t = ops.nhwc_to_nchw(x).requires_grad_()
    y_t = module(x_t)
    y_t.backward(ops.nhwc_to_nchw(g))
    new_state = {
        name: {"mean": ops.to_numpy(getattr(module, name).running_mean),
               "var": ops.to_numpy(getattr(module, name).running_var)}
        for name in state
    }
    grads = network.torch_grads_as_params(module, params)
    return ops.nchw_to_nhwc(y_t), new_state, ops.nchw_to_nhwc(x_t.grad), grads


def check_mbconv(student_fn, stride=1, c_in=8, c_out=8, train=True, stride_at="expand",
                 pool="max", shape=(2, 6, 6), seed=0):
    """Grade ``student_fn(p, state, x, stride, cfg, train) -> (y, new_state)``, an MBConv block.

    Output, updated BatchNorm statistics and the gradients (by autograd through the student's
    code) w.r.t. x and every parameter, against PyTorch's twin block and
    ``minicoat.blocks.mbconv_forward``.
    """
    rng = np.random.default_rng(seed)
    cfg = mc.config("coatnet-digits", stride_at=stride_at, pool=pool)
    block = make_block(cfg, "C", c_in, c_out, stride, shape[1:])
    params, state = _random_mbconv(rng, block, cfg)
    x = _normal(rng, (*shape, c_in))
    context = (f"mbconv_forward(x {x.shape}, C_out={c_out}, stride={stride}, train={train}, "
               f"stride_at={stride_at!r}, pool={pool!r})")
    before = _snapshot(p=params, state=state)
    result = _call(context, student_fn, params, state, x, stride, cfg, train)
    _require_unmodified(context, before, p=params, state=state)
    y, new_state = _pair(context, result, ("y", "new_state"))
    y_mc, state_mc = blocks.mbconv_forward(params, state, x, block, cfg, train)
    g = _normal(rng, y_mc.shape)
    y_torch, state_torch, dx_torch, dp_torch = _torch_mbconv(params, state, x, block, cfg,
                                                             train, g)
    shortcut = blocks._shortcut(params, x, stride, pool)
    suspects = {"the block without its shortcut (y = shortcut(x) + main path)": y_mc - shortcut,
                "the shortcut alone: the main path is missing": shortcut}
    refs = [("PyTorch", y_torch, ORACLE_TOL), ("minicoat", y_mc, ORACLE_TOL)]
    _require(context, [_mismatch("output", y, refs, suspects)])
    _require(context, _tree_mismatches("new_state.", new_state, [
        ("PyTorch", state_torch, ORACLE_TOL), ("minicoat", state_mc, ORACLE_TOL)]))

    def objective(xp):
        return anp.sum(student_fn(xp[1], state, xp[0], stride, cfg, train)[0] * g)

    dx, dp = _autograd_grad(context, objective, (x, params))
    problems = [_mismatch("gradient w.r.t. x", dx, [("PyTorch", dx_torch, ORACLE_TOL)],
                          _zeros_suspect(np.zeros_like(x)))]
    problems += _tree_mismatches("gradient w.r.t. p.", dp, [("PyTorch", dp_torch, ORACLE_TOL)])
    _require(context, problems)
    return f"{context}: output, state and gradients OK (error {_error(_plain(y), y_torch):.0e})"


# ===========================================================================================
# A4: training step
# ===========================================================================================


def _adam_leaf(p, g, m, v, step, lr, decay, betas, eps, weight_decay, correct=True,
               coupled=False):
    """One Adam(W) leaf update with optional classic mistakes (to recognise them)."""
    if decay and coupled:
        g = g + weight_decay * p
    elif decay:
        p = p * (1.0 - lr * weight_decay)
    m = betas[0] * m + (1.0 - betas[0]) * g
    v = betas[1] * v + (1.0 - betas[1]) * g * g
    if correct:
        m_hat, v_hat = m / (1.0 - betas[0] ** step), v / (1.0 - betas[1] ** step)
    else:
        m_hat, v_hat = m, v
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def _optimizer_params(rng):
    """A small parameter tree with every kind of leaf (weights, biases, norms, rel_bias)."""
    shapes = {"conv": {"w": (3, 3, 2, 4), "b": (4,)}, "norm": {"gamma": (4,), "beta": (4,)},
              "attn": {"w_qkv": (4, 6), "rel_bias": (2, 9)}, "head": {"w": (4, 3), "b": (3,)}}
    return tree_map(lambda s: rng.standard_normal(s), shapes)


class _TorchAdamW:
    """torch's AdamW over named tensors in two groups, decayed and not (``decay_mask``).

    Each step runs ``torch.optim.adamw.adamw``, the function ``torch.optim.AdamW.step`` calls,
    with the same state (``m``, ``v``, step counts): merely constructing ``torch.optim.AdamW``
    imports ``torch._dynamo``, which takes seconds.
    """

    def __init__(self, tensors, mask, betas, eps, weight_decay):
        torch = _oracle()[0]
        self.tensors, self.mask = tensors, mask
        self.hyper = {"beta1": betas[0], "beta2": betas[1], "eps": eps}
        self.weight_decay = weight_decay
        self.m = {k: torch.zeros_like(t) for k, t in tensors.items()}
        self.v = {k: torch.zeros_like(t) for k, t in tensors.items()}
        self.steps = {k: torch.tensor(0.0) for k in tensors}

    def step(self, grads, lr):
        """One update of every tensor in place, given ``grads`` by name."""
        torch = _oracle()[0]
        from torch.optim.adamw import adamw

        for decayed in (True, False):
            keys = [k for k in self.tensors if self.mask[k] == decayed]
            with torch.no_grad():
                adamw([self.tensors[k] for k in keys], [grads[k] for k in keys],
                      [self.m[k] for k in keys], [self.v[k] for k in keys], [],
                      [self.steps[k] for k in keys], foreach=False, capturable=False,
                      differentiable=False, fused=None, grad_scale=None, found_inf=None,
                      has_complex=False, amsgrad=False, maximize=False, lr=lr,
                      weight_decay=self.weight_decay if decayed else 0.0, **self.hyper)


@_one_torch_thread()
def _torch_adamw(params, grads_per_step, lrs, betas, eps, weight_decay):
    """torch's AdamW on the tree: the parameters after each step."""
    torch, ops, _ = _oracle()
    tensors = {k: torch.tensor(v) for k, v in flatten(params).items()}
    adam = _TorchAdamW(tensors, flatten(decay_mask(params)), betas, eps, weight_decay)
    out = []
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        adam.step({k: torch.tensor(g) for k, g in flatten(grads).items()}, lr)
        out.append(unflatten({k: ops.to_numpy(t) for k, t in tensors.items()}))
    return out


def check_adamw_update(student_fn, steps=3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                       seed=0):
    """Grade ``student_fn(params, grads, opt_state, lr, betas, eps, weight_decay)``.

    It must return ``(new_params, new_opt_state)``, decaying only the leaves ``decay_mask``
    selects. ``steps`` updates with a changing learning rate, against torch's AdamW
    and ``minicoat.optim.adamw_update``.
    """
    rng = np.random.default_rng(seed)
    params = _optimizer_params(rng)
    grads_per_step = [tree_map(lambda p: rng.standard_normal(p.shape), params)
                      for _ in range(steps)]
    lrs = [0.1, 0.03, 0.05, 0.02, 0.08][:steps] + [0.01] * max(0, steps - 5)
    hyper = {"betas": betas, "eps": eps, "weight_decay": weight_decay}
    torch_params = _torch_adamw(params, grads_per_step, lrs, **hyper)
    mask = flatten(decay_mask(params))

    def variant(decay=mask, **mistake):
        """The parameters after each step of an AdamW with one classic mistake."""
        flat = flatten(params)
        m = {k: np.zeros_like(p) for k, p in flat.items()}
        v, out = dict(m), []
        for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
            for k, g in flatten(grads).items():
                flat[k], m[k], v[k] = _adam_leaf(flat[k], g, m[k], v[k], t, lr, decay[k],
                                                 **hyper, **mistake)
            out.append(unflatten(dict(flat)))
        return out

    suspect_runs = {
        "AdamW decaying every leaf: biases, norms and rel_bias are not decayed (decay[key])":
            variant(decay={k: True for k in mask}),
        "Adam without bias correction (m / (1 - beta1**t), v / (1 - beta2**t))":
            variant(correct=False),
        "Adam with L2 regularisation (g + wd * p) instead of AdamW's decoupled decay":
            variant(coupled=True),
    }
    opt_state, ours_state, ours = adamw_init(params), adamw_init(params), params
    student_params = params
    for t in range(steps):
        context = f"adamw_update, step {t + 1} of {steps} (lr={lrs[t]}, {hyper})"
        before = _snapshot(params=student_params, grads=grads_per_step[t], opt_state=opt_state)
        result = _call(context, student_fn, student_params, grads_per_step[t], opt_state,
                       lrs[t], **hyper)
        _require_unmodified(context, before, params=student_params, grads=grads_per_step[t],
                            opt_state=opt_state)
        student_params, opt_state = _pair(context, result, ("new_params", "new_opt_state"))
        ours, ours_state = adamw_update(ours, grads_per_step[t], ours_state, lrs[t], **hyper,
                                        mask=decay_mask)
        whole = {d: run[t] for d, run in suspect_runs.items()}
        problems = _tree_mismatches("parameter ", student_params,
                                    [("PyTorch", torch_params[t], ORACLE_TOL),
                                     ("minicoat", ours, ORACLE_TOL)])
        if any(problems):  # name a classic mistake if the whole tree matches one
            got_all = np.concatenate([np.ravel(_plain(a))
                                      for a in flatten(student_params).values()])
            for description, run in whole.items():
                suspect = np.concatenate([np.ravel(a) for a in flatten(run).values()])
                if got_all.shape == suspect.shape and _error(got_all, suspect) < 1e-8:
                    problems.insert(0, f"the parameters match {description}")
        _require(context, problems)
        if not isinstance(opt_state, dict) or opt_state.get("step") != t + 1:
            got = opt_state.get("step") if isinstance(opt_state, dict) else opt_state
            raise CheckFailed(f"{context}: opt_state['step'] should be {t + 1}, got {got!r}")
        for moment in ("m", "v"):
            _require(context, _tree_mismatches(f"opt_state['{moment}'] ", opt_state[moment],
                                               [("minicoat", ours_state[moment], ORACLE_TOL)]))
    return (f"adamw_update: {steps} steps OK against torch's AdamW ({hyper}, "
            f"decay on {sum(mask.values())} of {len(mask)} leaves)")


@functools.lru_cache(maxsize=1)
def _digits():
    from ..datasets import load_dataset

    return load_dataset("digits")


def _digits_case(batch, seed):
    """The digits preset, fresh float64 parameters and a batch of training images."""
    config = mc.config("coatnet-digits")
    params, state = mc.init_params(config, seed=seed, dtype=np.float64)
    data = _digits()
    rows = np.random.default_rng(seed).choice(len(data.y_train), batch, replace=False)
    return config, params, state, data.x_train[rows].astype(np.float64), data.y_train[rows]


def _mc_loss_and_grad(params, state, x, y, config):
    saved = {}

    def loss_fn(p):
        logits, saved["state"] = mc.forward(p, state, x, config, train=True)
        return mc.cross_entropy(logits, y)

    loss, grads = autograd.value_and_grad(loss_fn)(params)
    return loss, grads, saved["state"]


@_one_torch_thread()
def _torch_loss_and_grad(params, state, x, y, config):
    """The PyTorch twin's loss, gradients (our layout) and updated BatchNorm state."""
    _, ops, network = _oracle()
    twin = network.to_torch(params, state, config).train()
    loss = ops.cross_entropy(twin(ops.nhwc_to_nchw(x)), y)
    loss.backward()
    return loss.item(), network.torch_grads_as_params(twin, params), network.from_torch(
        twin, config)[1]


def check_loss_and_grad(student_fn, batch=8, seed=0):
    """Grade ``student_fn(params, state, x, y, config) -> (loss, grads, new_state)``.

    Mean cross-entropy of the digits network in training mode, its gradient w.r.t. every
    parameter and the updated BatchNorm statistics, against the PyTorch twin network and
    minicoat; plus a finite-difference check of the gradient along a random direction.
    """
    config, params, state, x, y = _digits_case(batch, seed)
    context = f"loss_and_grad(digits preset, batch of {batch}, seed {seed})"
    before = _snapshot(params=params, state=state)
    result = _call(context, student_fn, params, state, x, y, config)
    _require_unmodified(context, before, params=params, state=state)
    loss, grads, new_state = _pair(context, result, ("loss", "grads", "new_state"))
    loss_torch, grads_torch, state_torch = _torch_loss_and_grad(params, state, x, y, config)
    loss_mc, grads_mc, _ = _mc_loss_and_grad(params, state, x, y, config)
    loss_refs = [("PyTorch", np.asarray(loss_torch), ORACLE_TOL),
                 ("minicoat", np.asarray(float(loss_mc)), ORACLE_TOL)]
    _require(context, [_mismatch("loss", np.asarray(getval(loss), dtype=np.float64), loss_refs)])
    problems = _tree_mismatches("gradient w.r.t. ", grads, [("PyTorch", grads_torch, ORACLE_TOL),
                                                            ("minicoat", grads_mc, ORACLE_TOL)],
                                _zeros_suspect(tree_map(np.zeros_like, params)))
    problems += _tree_mismatches("new_state.", new_state, [("PyTorch", state_torch, ORACLE_TOL)])
    _require(context, problems)
    # Finite differences along one random direction d: (L(p + eps d) - L(p - eps d)) / 2 eps.
    rng = np.random.default_rng(seed + 1)
    direction = tree_map(lambda p: rng.standard_normal(p.shape), params)

    def loss_along(t):
        moved = tree_map(lambda p, d: p + t * d, params, direction)
        return float(mc.cross_entropy(mc.forward(moved, state, x, config, train=True)[0], y))

    numeric = (loss_along(1e-6) - loss_along(-1e-6)) / 2e-6
    flat_grads = flatten(grads)
    analytic = sum(float(np.sum(_plain(flat_grads[k]) * d)) for k, d in flatten(direction).items())
    error = abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-300)
    if error > NUMERIC_TOL:  # pragma: no cover - the oracle comparison catches it first
        raise CheckFailed(f"{context}: directional derivative {analytic:.8g} vs finite "
                          f"differences {numeric:.8g}: error {error:.1e}")
    return (f"{context}: loss {loss_torch:.4f}, gradients and state OK (vs "
            f"PyTorch; finite differences along a random direction agree to {error:.0e})")


@_one_torch_thread()
def _torch_training(params, state, x, y, config, lr, steps):
    """``steps`` AdamW steps of the PyTorch twin: the losses, then (params, state)."""
    _, ops, network = _oracle()
    twin = network.to_torch(params, state, config).train()
    named = dict(twin.named_parameters())
    key_of = {network._torch_name(k): k for k in flatten(params)}  # twin name -> our key
    decay = flatten(decay_mask(params))
    mask = {n: decay[key_of[n]] for n in named}
    adam = _TorchAdamW(named, mask, ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"])
    losses = []
    for _ in range(steps):
        twin.zero_grad()
        loss = ops.cross_entropy(twin(ops.nhwc_to_nchw(x)), y)
        loss.backward()
        adam.step({n: t.grad for n, t in named.items()}, lr)
        losses.append(loss.item())
    return np.array(losses), *network.from_torch(twin, config)


def check_training_step(student_step_fn, steps=2, batch=8, lr=1e-3, seed=0):
    """Grade ``student_step_fn(params, state, opt_state, x, y, config, lr)``.

    It must return ``(params, state, opt_state, loss)``: the loss of the parameters it was
    given, then one AdamW update with the notebook's defaults (``ADAMW``), decaying the leaves
    ``decay_mask`` selects. ``steps`` steps on a digits batch, against the PyTorch twin trained
    by torch's AdamW and against minicoat.
    """
    config, params, state, x, y = _digits_case(batch, seed)
    context = f"training_step(digits preset, batch of {batch}, lr={lr}), {steps} steps"
    ours = (params, state, adamw_init(params))
    theirs = (params, state, adamw_init(params))
    losses, losses_mc = [], []
    for t in range(steps):
        before = _snapshot(params=theirs[0], state=theirs[1], opt_state=theirs[2])
        result = _call(f"{context}: step {t + 1}", student_step_fn, *theirs, x, y, config, lr)
        _require_unmodified(context, before, params=theirs[0], state=theirs[1],
                            opt_state=theirs[2])
        *theirs, loss = _pair(context, result, ("params", "state", "opt_state", "loss"))
        losses.append(float(getval(loss)))
        loss_mc, grads, new_state = _mc_loss_and_grad(ours[0], ours[1], x, y, config)
        new_params, opt_state = adamw_update(ours[0], grads, ours[2], lr, **ADAMW, mask=decay_mask)
        ours = (new_params, new_state, opt_state)
        losses_mc.append(float(loss_mc))
    losses_torch, params_torch, state_torch = _torch_training(params, state, x, y, config, lr,
                                                              steps)
    problems = [_mismatch("losses (one per step)", np.array(losses),
                          [("PyTorch", losses_torch, ORACLE_TOL),
                           ("minicoat", np.array(losses_mc), ORACLE_TOL)])]
    problems += _tree_mismatches("parameter ", theirs[0], [("PyTorch", params_torch, TRAINED_TOL),
                                                           ("minicoat", ours[0], TRAINED_TOL)])
    problems += _tree_mismatches("state.", theirs[1], [("PyTorch", state_torch, ORACLE_TOL)])
    opt_state = theirs[2]
    if not isinstance(opt_state, dict) or opt_state.get("step") != steps:
        problems.append(f"opt_state['step'] should be {steps}, got "
                        f"{opt_state.get('step') if isinstance(opt_state, dict) else opt_state!r}")
    _require(context, problems)
    return (f"{context}: OK, losses {np.round(losses, 4).tolist()} match PyTorch and minicoat; "
            "parameters, state and optimizer state too")


def check_overfit(losses, min_drop=0.5):
    """Grade a short training run on one fixed batch: the loss must fall below
    ``min_drop`` times its first value (a network that can't overfit one batch has a bug)."""
    context = "overfitting one batch"
    try:
        losses = np.array([float(getval(v)) for v in losses])
    except Exception as err:
        raise CheckFailed(f"{context}: losses should be a list of numbers ({err})") from err
    if len(losses) < 5:
        raise CheckFailed(f"{context}: expected at least 5 losses, got {len(losses)}")
    if not np.all(np.isfinite(losses)):
        raise CheckFailed(f"{context}: the loss diverged: {np.round(losses, 3).tolist()}")
    if not losses[-1] < min_drop * losses[0]:
        raise CheckFailed(
            f"{context}: the loss should fall below {min_drop} x its first value in "
            f"{len(losses)} steps; got {np.round(losses, 3).tolist()}. Is the update's sign "
            f"right, and does each step use the parameters the previous one returned?"
        )
    return f"{context}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"
