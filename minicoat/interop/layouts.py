"""How one array is laid out in minicoat and in a PyTorch / timm state dict, both ways.

minicoat is channels-last and stores kernels input-first; PyTorch stores them output-first:

* ``copy``: any shape, the same in both;
* ``conv``: ``(kh, kw, C_in, C_out)`` <-> ``(C_out, C_in, kh, kw)``;
* ``depthwise``: ``(kh, kw, C)`` <-> ``(C, 1, kh, kw)``;
* ``conv1x1``: ``(C_in, C_out)`` <-> ``(C_out, C_in, 1, 1)`` (a 1x1 ``Conv2d``);
* ``linear``: ``(C_in, C_out)`` <-> ``(C_out, C_in)`` (an ``nn.Linear``);
* ``qkv``: ``(C_in, 3 D)`` with columns ``[q | k | v]`` <-> ``(3 D, C_in, 1, 1)`` with rows
  ``[h: q, k, v]``; ``qkv_bias``: ``(3 D,)``, the same orders;
* ``rel_bias``: ``(heads, L)`` <-> ``(L, heads)``.

timm's qkv projection is *head-interleaved* (``head_first=True`` in ``Attention2d``): its
``3 D`` outputs run over ``(head, part, d)`` with part = q, k, v, while minicoat's run over
``(part, head, d)``. The relative-position index is the same element for element in both;
only the table is transposed.
"""

import numpy as onp

KINDS = ("copy", "conv", "depthwise", "conv1x1", "linear", "qkv", "qkv_bias", "rel_bias")


def _qkv_rows(rows, heads, from_order, to_order):
    """Reorder the leading ``3 D`` axis of ``rows`` between ``(part, head, d)`` ("minicoat")
    and ``(head, part, d)`` ("timm") orders: ``(3D, ...) -> (3D, ...)``."""
    three_d, rest = rows.shape[0], rows.shape[1:]
    d = three_d // (3 * heads)
    shape = {"minicoat": (3, heads, d), "timm": (heads, 3, d)}[from_order]
    split = rows.reshape(shape + rest)  # (3, heads, d, ...) or (heads, 3, d, ...)
    if from_order != to_order:
        split = onp.swapaxes(split, 0, 1)
    return onp.ascontiguousarray(split.reshape((three_d,) + rest))


def to_timm(kind, array, heads=0):
    """minicoat's layout of one array -> timm's (see the module's table)."""
    a = onp.asarray(array)
    if kind == "copy":
        out = a
    elif kind == "conv":  # (kh, kw, Ci, Co) -> (Co, Ci, kh, kw)
        out = a.transpose(3, 2, 0, 1)
    elif kind == "depthwise":  # (kh, kw, C) -> (C, 1, kh, kw)
        out = a.transpose(2, 0, 1)[:, None]
    elif kind == "conv1x1":  # (Ci, Co) -> (Co, Ci, 1, 1)
        out = a.T[:, :, None, None]
    elif kind == "linear":  # (Ci, Co) -> (Co, Ci)
        out = a.T
    elif kind == "qkv":  # (Ci, 3D) [q|k|v] -> (3D, Ci, 1, 1) [h: q, k, v]
        out = _qkv_rows(a.T, heads, "minicoat", "timm")[:, :, None, None]
    elif kind == "qkv_bias":
        out = _qkv_rows(a, heads, "minicoat", "timm")
    elif kind == "rel_bias":  # (heads, L) -> (L, heads)
        out = a.T
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return onp.array(out, order="C")  # a copy: never a view of the caller's arrays


def from_timm(kind, array, heads=0):
    """timm's layout of one array -> minicoat's (the inverse of ``to_timm``)."""
    a = onp.asarray(array)
    if kind == "copy":
        out = a
    elif kind == "conv":  # (Co, Ci, kh, kw) -> (kh, kw, Ci, Co)
        out = a.transpose(2, 3, 1, 0)
    elif kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C)
        out = a[:, 0].transpose(1, 2, 0)
    elif kind == "conv1x1":  # (Co, Ci, 1, 1) -> (Ci, Co)
        out = a[:, :, 0, 0].T
    elif kind == "linear":  # (Co, Ci) -> (Ci, Co)
        out = a.T
    elif kind == "qkv":  # (3D, Ci, 1, 1) [h: q, k, v] -> (Ci, 3D) [q|k|v]
        out = _qkv_rows(a[:, :, 0, 0], heads, "timm", "minicoat").T
    elif kind == "qkv_bias":
        out = _qkv_rows(a, heads, "timm", "minicoat")
    elif kind == "rel_bias":  # (L, heads) -> (heads, L)
        out = a.T
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return onp.array(out, order="C")  # a copy: never a view of the caller's arrays


def timm_shape(kind, shape, heads=0):
    """The shape timm stores for an array of minicoat ``shape`` (no array needed)."""
    return to_timm(kind, onp.broadcast_to(onp.zeros((), onp.int8), shape), heads).shape
