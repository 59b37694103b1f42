"""Input validation shared by every op: clear errors that say what was expected.

Every public op calls these before doing any work, so that a wrong shape or dtype fails at
the call that caused it with a message naming the expected layout, instead of failing deep
inside a matrix product (or, worse, broadcasting into a silently wrong answer).
"""

import numbers

import numpy as onp
from autograd.tracer import getval


def check_float(name, a):
    """Raise ``TypeError`` unless ``a`` is a floating-point array (float32 or float64)."""
    dtype = onp.asarray(getval(a)).dtype
    if dtype not in (onp.float32, onp.float64):
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {dtype}; "
            f"convert with {name}.astype(np.float32) (training) or np.float64 (checks)"
        )


def check_rank(name, a, rank, layout):
    """Raise ``ValueError`` unless ``a`` has ``rank`` axes; ``layout`` reads like "(N, H, W, C)"."""
    shape = onp.shape(getval(a))
    if len(shape) != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} axes), got shape {shape}")
    return shape


def check_same_dtype(**arrays):
    """Raise ``TypeError`` if the given arrays do not share one dtype (no silent up-casting)."""
    dtypes = {name: onp.asarray(getval(a)).dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name}: {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"arrays must share one dtype, got {listed}")


def check_stride(stride):
    """Raise ``ValueError`` unless ``stride`` is 1 or 2 (the only strides CoAtNet uses)."""
    if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")


def check_odd_kernel(name, kh, kw):
    """Raise ``ValueError`` unless the kernel is square with an odd size ("same" padding)."""
    if kh != kw or kh % 2 == 0:
        raise ValueError(
            f"{name} must be a square kernel of odd size (k, k, ...) with k in 1, 3, 5, ...; "
            f"got spatial size ({kh}, {kw})"
        )


def check_conv_args(x, w, stride, kernel_layout, depthwise):
    """Arguments of a convolution: float ``x`` (N, H, W, C), an odd square kernel whose C_in
    matches, stride 1 or 2, one dtype."""
    check_float("x", x)
    check_float("w", w)
    _, _, _, c = check_rank("x", x, 4, "(N, H, W, C)")
    w_shape = check_rank("w", w, 3 if depthwise else 4, kernel_layout)
    check_odd_kernel("w", w_shape[0], w_shape[1])
    if w_shape[2] != c:
        raise ValueError(
            f"w must have shape {kernel_layout} with C_in = {c} to match x of shape "
            f"{onp.shape(getval(x))} (channels-last); got w of shape {w_shape}"
        )
    check_stride(stride)
    check_same_dtype(x=x, w=w)


def check_bias(b, c_out, x):
    """A bias of shape ``(C_out,)`` and the dtype of ``x``."""
    check_float("b", b)
    if onp.shape(getval(b)) != (c_out,):
        raise ValueError(f"b must have shape (C_out,) = ({c_out},), got {onp.shape(getval(b))}")
    check_same_dtype(x=x, b=b)


def check_affine(name, a, c, x):
    """A norm's ``gamma`` or ``beta``: float, shape ``(C,)``, the dtype of ``x``."""
    check_float(name, a)
    if onp.shape(getval(a)) != (c,):
        raise ValueError(
            f"{name} must have shape (C,) = ({c},) to match x, got {onp.shape(getval(a))}"
        )
    check_same_dtype(x=x, **{name: a})


def check_batch_norm_args(x, gamma, beta, running, train):
    """``batch_norm``'s arguments: x ``(N, H, W, C)`` or ``(N, C)``, affine and running
    statistics ``(C,)`` of x's dtype, and more than one value per channel in training mode."""
    check_float("x", x)
    shape = onp.shape(getval(x))
    if len(shape) not in (2, 4):
        raise ValueError(f"x must have shape (N, H, W, C) or (N, C), got shape {shape}")
    c = shape[-1]
    check_affine("gamma", gamma, c, x)
    check_affine("beta", beta, c, x)
    for name in ("mean", "var"):
        stat = running[name]
        if onp.shape(stat) != (c,) or onp.asarray(stat).dtype != getval(x).dtype:
            raise ValueError(
                f"running['{name}'] must have shape (C,) = ({c},) and the dtype of x "
                f"({getval(x).dtype}), got shape {onp.shape(stat)} and dtype "
                f"{onp.asarray(stat).dtype}"
            )
    if train and int(onp.prod(shape[:-1])) < 2:
        raise ValueError(
            f"batch_norm in training mode needs more than one value per channel, got x of "
            f"shape {shape}; use a larger batch or train=False"
        )


def check_layer_norm_args(x, gamma, beta):
    """``layer_norm``'s arguments: float ``x`` ``(..., C)``, ``gamma``, ``beta`` ``(C,)``."""
    check_float("x", x)
    c = onp.shape(getval(x))[-1]
    check_affine("gamma", gamma, c, x)
    check_affine("beta", beta, c, x)


def check_attention_args(x, p, heads, variant):
    """``relative_attention``'s arguments: x ``(N, H, W, C)``, the projections and the bias
    table of a ``heads``-head layer on that grid, one dtype, and a known variant."""
    check_float("x", x)
    n, h, w, c = check_rank("x", x, 4, "(N, H, W, C)")
    if variant not in ("pre", "post"):
        raise ValueError(f"variant must be 'pre' or 'post', got {variant!r}")
    shapes = {name: onp.shape(getval(p[name])) for name in ("w_qkv", "b_qkv", "w_out", "b_out")}
    if len(shapes["w_qkv"]) != 2 or shapes["w_qkv"][0] != c or shapes["w_qkv"][1] % 3:
        raise ValueError(
            f"p['w_qkv'] must have shape (C, 3*D) with C = {c} to match x of shape {(n, h, w, c)}, "
            f"got {shapes['w_qkv']}"
        )
    dim = shapes["w_qkv"][1] // 3
    if not isinstance(heads, numbers.Integral) or heads < 1 or dim % heads:
        raise ValueError(
            f"heads must be a positive integer dividing the attention width D = {dim}, "
            f"got {heads!r}"
        )
    if shapes["b_qkv"] != (3 * dim,) or len(shapes["w_out"]) != 2 or shapes["w_out"][0] != dim:
        raise ValueError(
            f"expected p['b_qkv'] of shape ({3 * dim},) and p['w_out'] of shape ({dim}, C_out), "
            f"got {shapes['b_qkv']} and {shapes['w_out']}"
        )
    table = (heads, (2 * h - 1) * (2 * w - 1))
    if onp.shape(getval(p["rel_bias"])) != table:
        raise ValueError(
            f"p['rel_bias'] must have shape (heads, (2H-1)*(2W-1)) = {table} for a {h}x{w} grid "
            f"and {heads} heads, got {onp.shape(getval(p['rel_bias']))}"
        )
    check_same_dtype(
        x=x, **{name: p[name] for name in ("w_qkv", "b_qkv", "w_out", "b_out", "rel_bias")}
    )
