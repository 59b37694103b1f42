"""Tiny helpers for pytrees: nested dicts whose leaves are arrays (or numbers).

Parameters, BatchNorm state and optimizer state are all such trees, e.g.::

    {"stem": {"conv0": {"w": (3, 3, 1, 32), "b": (32,)}}, "head": {"w": ..., "b": ...}}

A tree's *structure* is its dict keys; anything that is not a dict is a *leaf*. Keys are
strings without ".", because ``flatten`` joins them with "." into one key per leaf
("stem.conv0.w"), the form ``numpy.savez`` stores. Empty dicts hold no leaf and vanish when
flattened. None of these helpers modify their inputs.
"""

import numpy as onp


def flatten(tree):
    """The leaves of ``tree`` as a flat dict from dotted key to leaf, keys in sorted order.

    >>> flatten({"b": {"y": 2, "x": 1}, "a": 0})
    {'a': 0, 'b.x': 1, 'b.y': 2}

    Raises ``ValueError`` for a key that is not a string or contains "." (it could not be
    split back by ``unflatten``).
    """
    flat = {}

    def visit(node, prefix):
        for key, value in node.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"pytree keys must be non-empty strings without '.', got {key!r}")
            if isinstance(value, dict):
                visit(value, prefix + key + ".")
            else:
                flat[prefix + key] = value

    visit(tree, "")
    # Sort the joined keys (not each level's keys): "a-b" sorts before "a.x" as a string.
    return dict(sorted(flat.items()))


def unflatten(flat):
    """Rebuild the nested dict from ``flatten`` output (the inverse of ``flatten``).

    >>> unflatten({"a": 0, "b.x": 1, "b.y": 2})
    {'a': 0, 'b': {'x': 1, 'y': 2}}
    """
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {name!r} puts a subtree under the leaf {key!r}")
        if leaf in node:
            raise ValueError(f"key {name!r} collides with a subtree of the same name")
        node[leaf] = value
    return tree


def tree_map(f, tree, *rest):
    """Apply ``f`` leafwise: ``f(leaf, *matching leaves of rest)``, keeping the structure.

    All trees must have the same keys (checked, so a typo'd or missing gradient is an error
    rather than a silently skipped parameter).

    >>> tree_map(lambda a, b: a + b, {"w": 1, "n": {"b": 2}}, {"w": 10, "n": {"b": 20}})
    {'n': {'b': 22}, 'w': 11}
    """
    flats = [flatten(t) for t in (tree, *rest)]
    for other in flats[1:]:
        if other.keys() != flats[0].keys():
            missing = sorted(flats[0].keys() - other.keys())
            unexpected = sorted(other.keys() - flats[0].keys())
            raise ValueError(
                f"trees differ in structure: missing {missing}, unexpected {unexpected}"
            )
    return unflatten({key: f(*(flat[key] for flat in flats)) for key in flats[0]})


def tree_zeros_like(tree):
    """A tree of zero arrays with the shapes and dtypes of ``tree``'s leaves.

    >>> import numpy as onp
    >>> tree_zeros_like({"w": onp.ones((2,), onp.float32)})
    {'w': array([0., 0.], dtype=float32)}
    """
    return tree_map(onp.zeros_like, tree)
