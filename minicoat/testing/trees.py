"""The inputs a check perturbs, leaf by leaf, and trees of arrays compared normwise.

A gradient check moves the arguments of ``f`` that it differentiates (``argnums``) and holds
the others fixed. Each of those arguments is an array or a pytree: nested dicts (minicoat's
parameters), lists or tuples whose leaves are arrays. ``Leaves`` flattens them into one list
of named float64 leaves and puts a perturbed copy back together, so the checks never care
which of the two they were given.

Leaf names read like the code that reaches them: ``s3.block0.attn.rel_bias`` for a leaf of
a params dict when one argument is checked, ``args[1]`` for a plain array when several are.
"""

import numpy as onp
from autograd.tracer import getval

from ..tree import flatten

_FLOAT32_REFUSED = (
    "{name} is {dtype}: a gradient check needs float64. A centred difference divides the "
    "round-off of f by the step: float32 carries ~1.2e-7 relative error, so with eps=1e-6 "
    "the numeric derivative is off by ~0.1 |f|, as large as what it measures (float64: "
    "~1e-10 |f|). Pass x.astype(np.float64), or upcast=True to have the check do it."
)


def _paths(node, path=()):
    """``[(path, leaf)]`` of a nested dict / list / tuple, dict keys in sorted order."""
    if isinstance(node, dict):
        return [item for key in sorted(node) for item in _paths(node[key], (*path, key))]
    if isinstance(node, (list, tuple)):
        return [item for i, value in enumerate(node) for item in _paths(value, (*path, i))]
    return [(path, node)]


def _replace(node, path, value):
    """A copy of ``node`` with the leaf at ``path`` replaced (containers copied, not leaves)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace(node[head], rest, value)}
    items = list(node)
    items[head] = _replace(items[head], rest, value)
    return type(node)(items)


def _label(prefix, path):
    """``prefix`` then the path: dict keys joined with ".", list / tuple positions as ``[i]``."""
    text = prefix
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else ("." if text else "") + step
    return text


class Leaves:
    """The float64 leaves of ``args[i]`` for ``i`` in ``argnums``, and the way back.

    Attributes:
        argnums: tuple of the checked argument positions.
        names: one readable name per leaf.
        values: one float64 array per leaf (copies; the caller's arrays are never modified).
    """

    def __init__(self, args, argnums, upcast=False):
        self.args = tuple(args)
        single = isinstance(argnums, int)
        self.argnums = (argnums,) if single else tuple(argnums)
        for i in self.argnums:
            if not isinstance(i, int) or not -len(args) <= i < len(args):
                raise ValueError(f"argnums {argnums!r}: f is given {len(args)} argument(s)")
        self.argnums = tuple(i % len(args) for i in self.argnums)
        self.slots, self.names, self.values = [], [], []
        for i in self.argnums:
            for path, leaf in _paths(self.args[i]):
                prefix = "" if single and path else f"args[{i}]"
                name = _label(prefix, path)
                self.slots.append((i, path))
                self.names.append(name)
                self.values.append(_as_float64(name, leaf, upcast))
        if not self.values:
            raise ValueError(f"args at argnums {argnums!r} hold no array to check")

    def with_values(self, values):
        """``args`` with the checked leaves replaced by ``values`` (one array per leaf)."""
        args = list(self.args)
        for (i, path), value in zip(self.slots, values, strict=True):
            args[i] = _replace(args[i], path, value)
        return tuple(args)

    def selected(self, args=None):
        """The checked arguments of ``args``: one argument, or a tuple of them."""
        args = self.args if args is None else args
        if len(self.argnums) == 1:
            return args[self.argnums[0]]
        return tuple(args[i] for i in self.argnums)

    def leaves_of(self, tree, what):
        """The leaves of ``tree`` (shaped like ``selected()``), checked against ours, float64."""
        found = [leaf for _, leaf in _paths(tree)] if len(self.argnums) == 1 else [
            leaf for part in tree for _, leaf in _paths(part)]
        if len(found) != len(self.values):
            raise ValueError(
                f"{what} has {len(found)} leaves where the checked arguments have "
                f"{len(self.values)} ({', '.join(self.names[:4])}, ...)"
            )
        out = []
        for name, value, leaf in zip(self.names, self.values, found, strict=True):
            leaf = onp.asarray(getval(leaf), dtype=onp.float64) if leaf is not None else None
            if leaf is None or leaf.shape != value.shape:
                shape = None if leaf is None else leaf.shape
                raise ValueError(f"{what}: {name or 'x'} has shape {shape}, expected {value.shape}")
            out.append(leaf)
        return out


def _as_float64(name, leaf, upcast):
    """A float64 copy of one leaf; float32 only with ``upcast``; anything else refused."""
    array = onp.asarray(getval(leaf))
    label = name or "x"
    if array.dtype == onp.float64:
        return array.copy()
    if array.dtype == onp.float32 or (array.dtype == onp.float16):
        if upcast:
            return array.astype(onp.float64)
        raise TypeError(_FLOAT32_REFUSED.format(name=label, dtype=array.dtype))
    raise TypeError(f"{label} must be a float64 array to be checked, got dtype {array.dtype}")


# -- trees of arrays against each other ------------------------------------------------------


def tree_errors(ours, theirs):
    """Normwise relative error per leaf of two trees (dicts) or arrays with the same keys.

    Returns ``{dotted key: error}`` (key ``""`` for two arrays), ``minicoat.rel_error`` per
    leaf. A leaf whose true value is zero (the shift of a BatchNorm that feeds a bias-free 1x1
    convolution and then another BatchNorm in training mode: the second BatchNorm removes any
    constant shift, so that gradient is round-off) is measured in absolute terms against the
    norm of the whole tree instead: below 1e-8 of it, a relative error means nothing.
    """
    from ..gradcheck import rel_error

    ours = flatten(ours) if isinstance(ours, dict) else {"": ours}
    theirs = flatten(theirs) if isinstance(theirs, dict) else {"": theirs}
    if ours.keys() != theirs.keys():
        raise ValueError(
            f"trees differ: only ours {sorted(ours.keys() - theirs.keys())[:5]}, "
            f"only theirs {sorted(theirs.keys() - ours.keys())[:5]}"
        )
    total = onp.sqrt(sum(onp.sum(onp.asarray(v, onp.float64) ** 2) for v in theirs.values()))
    errors = {}
    for key in ours:
        a, b = onp.asarray(ours[key], onp.float64), onp.asarray(theirs[key], onp.float64)
        scale = max(onp.linalg.norm(a), onp.linalg.norm(b))
        if scale < 1e-8 * total:
            errors[key] = float(onp.linalg.norm(a - b) / total)
        else:
            errors[key] = rel_error(a, b)
    return errors


def assert_trees_close(ours, theirs, tol, what, ours_name="ours", theirs_name="theirs"):
    """Every leaf within ``tol`` normwise (``tree_errors``), else an ``AssertionError``.

    The message names the worst leaf, its error and how many leaves are over. Returns the
    worst error (0.0 for two empty trees: a network without BatchNorm has no state).
    """
    errors = tree_errors(ours, theirs)
    if not errors:
        return 0.0
    worst = max(errors, key=errors.get)
    if errors[worst] > tol:
        raise AssertionError(
            f"{what}{'.' + worst if worst else ''}: rel_error({ours_name}, {theirs_name}) = "
            f"{errors[worst]:.2e} > {tol:.0e} ({sum(e > tol for e in errors.values())} of "
            f"{len(errors)} leaves over)"
        )
    return errors[worst]
