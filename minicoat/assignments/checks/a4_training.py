"""Checks of A4: AdamW, the loss and its gradient, the training step, overfitting a batch."""

import functools

import autograd
import numpy as np
from autograd.tracer import getval

import minicoat as mc

from ...optim import adamw_init, adamw_update, decay_mask
from ...tree import flatten, tree_map, unflatten
from .common import (
    ADAMW,
    NUMERIC_TOL,
    ORACLE_TOL,
    TRAINED_TOL,
    CheckFailed,
    _call,
    _error,
    _guarded,
    _mismatch,
    _one_torch_thread,
    _oracle,
    _pair,
    _plain,
    _require,
    _require_unmodified,
    _snapshot,
    _tree_mismatches,
    _zeros_suspect,
)
from .guard import Forbidden

ADAMW_RULE = ("AdamW", "optim.py", r"adam|leaf|update|make_optimizer")
TRAIN_RULE = ("training step", "train.py", r"train_step|loss_fn")
FORBID_ADAMW = Forbidden("adamw_update", ADAMW_RULE)
FORBID_LOSS = Forbidden("loss_and_grad", TRAIN_RULE)
FORBID_STEP = Forbidden("training_step (with your adamw_update)", ADAMW_RULE, TRAIN_RULE)


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
        result = _call(context, _guarded(context, FORBID_ADAMW, student_fn), student_params,
                       grads_per_step[t], opt_state, lrs[t], **hyper)
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
    from ...datasets import load_dataset

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
    result = _call(context, _guarded(context, FORBID_LOSS, student_fn), params, state, x, y,
                   config)
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
        result = _call(f"{context}: step {t + 1}", _guarded(context, FORBID_STEP, student_step_fn),
                       *theirs, x, y, config, lr)
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


def check_overfit(student_step_fn, steps=10, batch=16, lr=3e-3, min_drop=0.5, seed=0):
    """Grade ``student_step_fn`` (as ``check_training_step``) on a short run on one batch.

    ``steps`` steps from fresh float32 parameters on the first ``batch`` training digits: the
    loss must fall below ``min_drop`` times its first value (a network that can't overfit one
    batch has a bug).
    """
    context = f"overfitting one batch ({batch} digits, {steps} steps, lr={lr})"
    config = mc.config("coatnet-digits")
    data = _digits()
    x, y = data.x_train[:batch], data.y_train[:batch]
    params, state = mc.init_params(config, seed=seed)
    opt_state, losses = adamw_init(params), []
    step = _guarded(context, FORBID_STEP, student_step_fn)
    for t in range(steps):
        result = _call(f"{context}: step {t + 1}", step, params, state, opt_state, x, y,
                       config, lr)
        params, state, opt_state, loss = _pair(context, result,
                                               ("params", "state", "opt_state", "loss"))
        try:
            losses.append(float(getval(loss)))
        except Exception as err:
            raise CheckFailed(f"{context}: the loss should be a number ({err})") from err
    losses = np.array(losses)
    if not np.all(np.isfinite(losses)):
        raise CheckFailed(f"{context}: the loss diverged: {np.round(losses, 3).tolist()}")
    if not losses[-1] < min_drop * losses[0]:
        raise CheckFailed(
            f"{context}: the loss should fall below {min_drop} x its first value; got "
            f"{np.round(losses, 3).tolist()}. Is the update's sign right, and does each step "
            f"use the parameters the previous one returned?"
        )
    return f"{context}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
