"""Optimizers as pure functions over parameter pytrees: AdamW, SGD and gradient clipping.

Each optimizer is a pair ``init(params) -> opt_state`` and
``update(params, grads, opt_state, lr, ...) -> (new_params, new_opt_state)``. Updates return
new arrays and never modify their inputs. The algorithms are exactly those of
``torch.optim.AdamW`` and ``torch.optim.SGD`` (tests compare the two to ~1e-15 in float64).
Optimizer state is a pytree of arrays plus the int ``"step"``, so a checkpoint can store it.

dtype: every update is computed in the parameter's dtype. Hyper-parameters are converted to
Python floats, which NumPy treats as "weak" scalars (a float32 array times a Python float
stays float32, whereas times ``onp.float64(0.1)`` it would become float64), and gradients are
cast to the parameter's dtype. So float32 parameters and state stay float32.

Weight decay applies to the leaves selected by a *mask*: a tree of bools shaped like the
parameters (``decay_mask`` gives the usual choice: weights yes; biases, norms and relative
position biases no). This is what torch does with two parameter groups.
"""

import inspect
import math
from collections import namedtuple

import numpy as onp

from .tree import flatten, tree_map, tree_zeros_like, unflatten


def decay_mask(params):
    """Which leaves get weight decay: ``True`` for weights (keys starting with "w").

    Biases ("b", "b_qkv", ...), norm parameters ("gamma", "beta") and relative-position
    tables ("rel_bias") are not decayed: shrinking them towards 0 is not a useful prior
    (a LayerNorm gain of 0 switches its input off).

    >>> decay_mask({"conv": {"w": 0, "b": 0}, "norm": {"gamma": 0}, "attn": {"w_qkv": 0}})
    {'attn': {'w_qkv': True}, 'conv': {'b': False, 'w': True}, 'norm': {'gamma': False}}
    """
    return unflatten({k: k.rsplit(".", 1)[-1].startswith("w") for k in flatten(params)})


def _as_param_dtype(grad, param):
    """``grad`` as an array of ``param``'s shape and dtype (a float64 gradient of a float32
    parameter would otherwise promote the parameter to float64)."""
    grad = onp.asarray(grad)
    if grad.shape != param.shape:
        raise ValueError(f"gradient of shape {grad.shape} for a parameter of shape {param.shape}")
    return grad.astype(param.dtype, copy=False)


def _mask_tree(mask, params):
    """A tree of bools: ``None`` means decay every leaf (torch's single-group default)."""
    if mask is None:
        return tree_map(lambda p: True, params)
    if callable(mask):
        return mask(params)
    return mask


def _check_lr(lr):
    lr = float(lr)
    if not lr >= 0.0:
        raise ValueError(f"learning rate must be >= 0, got {lr}")
    return lr


# -- AdamW -------------------------------------------------------------------------------


def adamw_init(params):
    """AdamW state: first and second moments ``m``, ``v`` (zeros like params) and ``step``."""
    return {"m": tree_zeros_like(params), "v": tree_zeros_like(params), "step": 0}


def adamw_update(params, grads, opt_state, lr, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.05, mask=None):
    """One AdamW step (Loshchilov & Hutter), exactly as ``torch.optim.AdamW``.

    With ``t`` the new step count and ``g`` the gradient, for each leaf ``p``::

        p <- p * (1 - lr * wd)                      (decoupled decay; masked leaves only)
        m <- m + (1 - b1) * (g - m)                 (= b1 m + (1 - b1) g, torch's lerp)
        v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Args:
        params, grads: pytrees of the same structure; grads are cast to params' dtypes.
        opt_state: from ``adamw_init`` or a previous update.
        lr: learning rate of this step (a schedule may change it every step).
        betas, eps, weight_decay: as in torch.
        mask: tree of bools (decay where True), a function ``params -> mask`` such as
            ``decay_mask``, or None to decay every leaf (torch's default).

    Returns:
        ``(new_params, new_opt_state)``; the inputs are not modified.
    """
    lr, eps, weight_decay = _check_lr(lr), float(eps), float(weight_decay)
    beta1, beta2 = float(betas[0]), float(betas[1])
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas}")
    step = int(opt_state["step"]) + 1
    # Python floats, so float32 arrays stay float32.
    step_size = lr / (1.0 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)

    def leaf(p, g, m, v, decay):
        g = _as_param_dtype(g, p)
        if decay and weight_decay != 0.0:
            p = p * (1.0 - lr * weight_decay)
        m = m + (1.0 - beta1) * (g - m)
        v = beta2 * v + (1.0 - beta2) * (g * g)
        denom = onp.sqrt(v) / bias_correction2_sqrt + eps
        return p - step_size * (m / denom), m, v

    mask = _mask_tree(mask, params)
    out = tree_map(leaf, params, grads, opt_state["m"], opt_state["v"], mask)
    flat = flatten(out)  # leaves are (p, m, v) tuples: split them into three trees
    new_params, m, v = (unflatten({k: t[i] for k, t in flat.items()}) for i in range(3))
    return new_params, {"m": m, "v": v, "step": step}


# -- SGD ---------------------------------------------------------------------------------


def sgd_init(params):
    """SGD state: the momentum buffer (zeros like params; unused without momentum), ``step``.

    Torch creates the buffer at the first step; a fixed structure keeps the state a plain
    tree of arrays for checkpoints, and ``step == 0`` marks "no buffer yet".
    """
    return {"momentum": tree_zeros_like(params), "step": 0}


def sgd_update(params, grads, opt_state, lr, momentum=0.9, weight_decay=0.0, nesterov=False,
               mask=None):
    """One SGD step, exactly as ``torch.optim.SGD`` (dampening 0).

    For each leaf ``p`` with gradient ``g``::

        d <- g + wd * p                       (coupled weight decay; masked leaves only)
        buf <- d at the first step, else momentum * buf + d
        d <- d + momentum * buf if nesterov, else buf      (when momentum != 0)
        p <- p - lr * d

    Args:
        params, grads: pytrees of the same structure; grads are cast to params' dtypes.
        opt_state: from ``sgd_init`` or a previous update.
        lr: learning rate of this step.
        momentum, weight_decay, nesterov: as in torch (nesterov needs momentum > 0).
        mask: tree of bools, a function ``params -> mask``, or None (decay every leaf).

    Returns:
        ``(new_params, new_opt_state)``; the inputs are not modified.
    """
    lr, momentum, weight_decay = _check_lr(lr), float(momentum), float(weight_decay)
    if momentum < 0.0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov momentum requires momentum > 0")
    first = int(opt_state["step"]) == 0

    def leaf(p, g, buf, decay):
        d = _as_param_dtype(g, p)
        if decay and weight_decay != 0.0:
            d = d + weight_decay * p
        if momentum != 0.0:
            # Torch's buffer starts as a copy of the first update direction.
            buf = d.copy() if first else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        return p - lr * d, buf

    mask = _mask_tree(mask, params)
    flat = flatten(tree_map(leaf, params, grads, opt_state["momentum"], mask))
    new_params, buf = (unflatten({k: t[i] for k, t in flat.items()}) for i in range(2))
    return new_params, {"momentum": buf, "step": int(opt_state["step"]) + 1}


# -- gradient clipping -------------------------------------------------------------------


def clip_grad_norm(grads, max_norm):
    """Scale gradients so their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total = sqrt(sum of every squared entry)``; if
    ``max_norm / (total + 1e-6) < 1`` every gradient is multiplied by that factor (the 1e-6
    keeps the division finite), otherwise they are returned unchanged. A non-finite total
    gives non-finite gradients, as in torch; check the returned norm to skip such steps.

    Returns:
        ``(clipped_grads, total_norm)``; ``total_norm`` (a Python float) is the norm before
        clipping, useful for logging. Leaves keep their dtype.
    """
    leaves = [onp.asarray(g) for g in flatten(grads).values()]
    # Accumulate in float64: a float32 sum of squares over millions of entries loses digits.
    total = math.sqrt(sum(float(onp.sum(onp.square(g, dtype=onp.float64))) for g in leaves))
    coef = float(max_norm) / (total + 1e-6)
    if not coef < 1.0:  # also false for NaN, which then propagates as in torch
        return grads, total
    return tree_map(lambda g: onp.asarray(g) * coef, grads), total


# -- a uniform interface for the training loop ---------------------------------------------

Optimizer = namedtuple("Optimizer", ["name", "hyper", "init", "update"])
Optimizer.__doc__ = """An optimizer with fixed hyper-parameters.

``init(params) -> opt_state``; ``update(params, grads, opt_state, lr) -> (params, opt_state)``.
``hyper`` records the hyper-parameters (e.g. for a run's metadata).
"""

_OPTIMIZERS = {"adamw": (adamw_init, adamw_update), "sgd": (sgd_init, sgd_update)}


def make_optimizer(name, mask=decay_mask, **hyper):
    """An ``Optimizer`` by name ("adamw" or "sgd") with hyper-parameters bound.

    ``mask`` defaults to ``decay_mask`` (decay weights only, recomputed from the parameter
    names at each update); pass None to decay every leaf as torch does by default. Other
    keyword arguments are those of ``adamw_update`` / ``sgd_update`` except ``lr``, which
    changes per step and is given to ``update``.

    >>> opt = make_optimizer("adamw", weight_decay=0.05)
    >>> params = {"w": onp.ones(2, onp.float32)}
    >>> state = opt.init(params)
    >>> params, state = opt.update(params, {"w": onp.ones(2, onp.float32)}, state, lr=0.1)
    >>> params["w"], state["step"]  # 0.995 (decay) - 0.1 (Adam step 1 ~ lr * sign(g))
    (array([0.89500004, 0.89500004], dtype=float32), 1)
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OPTIMIZERS)}")
    init, update_fn = _OPTIMIZERS[name]
    if "lr" in hyper:
        raise ValueError("lr is passed to update() at each step (it follows the schedule)")
    # Catch a misspelt hyper-parameter now rather than at the first training step.
    allowed = set(inspect.signature(update_fn).parameters) - {
        "params", "grads", "opt_state", "lr", "mask"}
    unknown = sorted(set(hyper) - allowed)
    if unknown:
        raise ValueError(f"unknown {name} hyper-parameters {unknown}; expected {sorted(allowed)}")

    def update(params, grads, opt_state, lr):
        return update_fn(params, grads, opt_state, lr, mask=mask, **hyper)

    return Optimizer(name, dict(hyper), init, update)
