"""Checks of A3: the MBConv block."""

import autograd.numpy as anp
import numpy as np

import minicoat as mc

from ... import blocks
from ...model import init_from_spec
from ...plans import make_block
from ...tree import flatten, unflatten
from .common import (
    ORACLE_TOL,
    _autograd_grad,
    _call,
    _error,
    _guarded,
    _mismatch,
    _normal,
    _one_torch_thread,
    _oracle,
    _pair,
    _plain,
    _require,
    _require_unmodified,
    _shape_text,
    _snapshot,
    _tree_mismatches,
    _vjp_problems,
    _zeros_suspect,
)
from .guard import Forbidden

BATCH_NORM = ("BatchNorm", "*.py",
              r"batch_norm|_channel_moments|_normalize|_gradient_sums|_input_gradient")
FORBID_BN_VJP = Forbidden("BatchNorm's VJP", BATCH_NORM,
                          ("numerical gradient", "gradcheck.py", r"."),
                          ("autodiff", "*/autodiff.py", r"."), autodiff=True)
FORBID_MBCONV = Forbidden("the MBConv block",
                          ("MBConv block", "blocks.py", r"mbconv_forward|_shortcut|_pool"))


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
    student_fn = _guarded(context, FORBID_MBCONV, student_fn)
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


def check_batch_norm_vjp(student_vjp_fn, shape=(4, 3, 3, 5), seed=0):
    """Grade ``student_vjp_fn(x, gamma, g) -> (dx, dgamma, dbeta)``, BatchNorm's backward in
    training mode (batch statistics over N, H, W; eps 1e-5), written by hand.

    Against autograd of ``mc.batch_norm(..., train=True)`` and finite differences.
    """
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = _normal(rng, shape) * 1.5 + 0.3
    gamma, beta, g = 1.0 + _normal(rng, (c,), 0.3), _normal(rng, (c,), 0.3), _normal(rng, shape)
    context = f"batch_norm_vjp({_shape_text(x=x, gamma=gamma, g=g)}, training mode)"
    result = _call(context, _guarded(context, FORBID_BN_VJP, student_vjp_fn), x, gamma, g)
    got = _pair(context, result, ("dx", "dgamma", "dbeta"))
    running = {"mean": np.zeros(c), "var": np.ones(c)}

    def forward(x_, gamma_, beta_):
        return mc.batch_norm(x_, gamma_, beta_, running=running, train=True)[0]

    axes = tuple(range(x.ndim - 1))
    inv_std = 1.0 / np.sqrt(x.var(axes) + 1e-5)
    suspects = {"x": {
        "the gradient as if the batch mean and variance were constants (g * gamma / sigma): "
        "in training mode they depend on x": g * gamma * inv_std}}
    _require(context, _vjp_problems(("x", "gamma", "beta"), got, forward, (x, gamma, beta), g,
                                    suspects))
    return f"{context}: backward OK against autograd of mc.batch_norm and finite differences"
