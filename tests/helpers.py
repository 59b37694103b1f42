"""Comparison helpers shared by the tests: trees of arrays against each other, normwise."""

import numpy as np

import minicoat as mc
from minicoat.tree import flatten


def tree_errors(ours, theirs):
    """Normwise relative error per leaf of two trees (dicts) or arrays with the same keys.

    A leaf whose true value is zero (the shift of a BatchNorm that feeds a bias-free 1x1
    convolution and then another BatchNorm in training mode: the second BatchNorm removes any
    constant shift, so that gradient is round-off) is measured in absolute terms against the
    norm of the whole tree instead: below 1e-8 of it, a relative error means nothing.
    """
    ours = flatten(ours) if isinstance(ours, dict) else {"": ours}
    theirs = flatten(theirs) if isinstance(theirs, dict) else {"": theirs}
    assert ours.keys() == theirs.keys(), (
        f"trees differ: only ours {sorted(ours.keys() - theirs.keys())[:5]}, "
        f"only theirs {sorted(theirs.keys() - ours.keys())[:5]}"
    )
    total = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in theirs.values()))
    errors = {}
    for key in ours:
        a, b = np.asarray(ours[key], np.float64), np.asarray(theirs[key], np.float64)
        scale = max(np.linalg.norm(a), np.linalg.norm(b))
        if scale < 1e-8 * total:
            errors[key] = float(np.linalg.norm(a - b) / total)
        else:
            errors[key] = mc.rel_error(a, b)
    return errors


def assert_trees_close(ours, theirs, tol, what, ours_name="ours", theirs_name="theirs"):
    """Every leaf within ``tol`` normwise (``tree_errors``); the message names the worst."""
    errors = tree_errors(ours, theirs)
    if not errors:  # two empty trees (a network without BatchNorm has no state)
        return 0.0
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, (
        f"{what}{'.' + worst if worst else ''}: rel_error({ours_name}, {theirs_name}) = "
        f"{errors[worst]:.2e} > {tol:.0e} ({sum(e > tol for e in errors.values())} of "
        f"{len(errors)} leaves over)"
    )
    return errors[worst]
