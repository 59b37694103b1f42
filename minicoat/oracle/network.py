"""The whole CoAtNet as a PyTorch ``nn.Module`` (NCHW), with weight transfer both ways.

This twin is written the way a PyTorch user would write it, from torch's own layers
(``nn.Conv2d`` with ``groups`` for depthwise, ``nn.BatchNorm2d``, ``nn.LayerNorm``,
``nn.MaxPool2d(ceil_mode=True)``, a relative attention built from its definition), so that
agreeing with it to ~1e-13 in float64 is evidence that the NumPy code computes CoAtNet and
not merely what its author believed. It is also the way out to scale: prototype in NumPy,
``to_torch`` the same weights, and train on GPUs.

Module names mirror the keys of minicoat's parameter tree (``s3.block0.attn.qkv`` holds
``params["s3"]["block0"]["attn"]["w_qkv"]``), so the transfer is a walk over one tree.
"""

import math

import numpy as onp
import torch
import torch.nn.functional as F
from torch import nn

from ..model import check_params, param_spec, state_spec
from ..plans import plan, stage_blocks
from ..tree import flatten, unflatten

# -- modules --------------------------------------------------------------------------------


def _pool(kind):
    if kind == "max":
        return nn.MaxPool2d(2, 2, ceil_mode=True)
    return nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)


def _gelu(cfg):
    return nn.GELU(approximate=cfg.gelu)


class Shortcut(nn.Module):
    """Identity, or ``Proj(Pool(x))`` with a 1x1 convolution named ``proj``."""

    def __init__(self, c_in, c_out, stride, cfg, proj):
        super().__init__()
        self.pool = _pool(cfg.pool) if stride == 2 else nn.Identity()
        self.has_proj = proj
        if self.has_proj:
            self.proj = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        x = self.pool(x)
        return self.proj(x) if self.has_proj else x


class SqueezeExcite(nn.Module):
    def __init__(self, c, reduced, cfg):
        super().__init__()
        self.reduce = nn.Linear(c, reduced)
        self.expand = nn.Linear(reduced, c)
        self.act = _gelu(cfg) if cfg.se_act == "gelu" else nn.SiLU()

    def forward(self, x):  # (N, C, H, W)
        s = x.mean(dim=(2, 3))
        gate = torch.sigmoid(self.expand(self.act(self.reduce(s))))
        return x * gate[:, :, None, None]


class MBConv(nn.Module):
    """An MBConv block for its record in the plan (``minicoat.plans.Block``: widths, stride)."""

    def __init__(self, block, cfg):
        super().__init__()
        c_in, c_out, mid, stride = block.c_in, block.c_out, block.expanded, block.stride
        expand_stride = stride if cfg.stride_at == "expand" else 1
        dw_stride = stride if cfg.stride_at == "depthwise" else 1
        self.shortcut = Shortcut(c_in, c_out, stride, cfg, block.proj)
        self.pre_norm = nn.BatchNorm2d(c_in)
        self.expand = nn.Conv2d(c_in, mid, 1, stride=expand_stride, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride=dw_stride, padding=1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, block.se, cfg)
        self.project = nn.Conv2d(mid, c_out, 1)
        self.act = _gelu(cfg)

    def forward(self, x):
        h = self.expand(self.pre_norm(x))
        h = self.act(self.norm1(h))
        h = self.act(self.norm2(self.dw(h)))
        return self.shortcut(x) + self.project(self.se(h))


class RelativeAttention(nn.Module):
    """Multi-head self-attention with a learned bias per head and relative offset."""

    def __init__(self, c_in, dim, heads, grid, variant):
        super().__init__()
        self.heads, self.variant = heads, variant
        self.qkv = nn.Linear(c_in, 3 * dim)
        self.out = nn.Linear(dim, dim)
        h, w = grid
        self.rel_bias = nn.Parameter(torch.zeros(heads, (2 * h - 1) * (2 * w - 1)))
        # Offsets between all pairs of (row, col) coordinates, shifted to start at 0.
        coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
        coords = coords.flatten(1)  # (2, T)
        offsets = coords[:, :, None] - coords[:, None, :]  # (2, T, T)
        index = (offsets[0] + h - 1) * (2 * w - 1) + (offsets[1] + w - 1)
        self.register_buffer("index", index, persistent=False)

    def forward(self, x):  # (N, C, H, W) -> (N, D, H, W)
        n, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, T, C)
        qkv = self.qkv(tokens).reshape(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, d)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        bias = self.rel_bias[:, self.index]  # (heads, T, T)
        if self.variant == "pre":
            attn = torch.softmax(logits + bias, dim=-1)
        else:
            attn = torch.softmax(logits, dim=-1) + bias
        out = (attn @ v).transpose(1, 2).reshape(n, h * w, -1)  # (N, T, D)
        return self.out(out).transpose(1, 2).reshape(n, -1, h, w)


def _channels_last(module, x):
    """Apply a channels-last module (LayerNorm, Linear) to an NCHW map."""
    return module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Transformer(nn.Module):
    """A Transformer block for its record in the plan (``minicoat.plans.Block``)."""

    def __init__(self, block, cfg):
        super().__init__()
        c_in, c_out, stride = block.c_in, block.c_out, block.stride
        self.shortcut = Shortcut(c_in, c_out, stride, cfg, block.proj)
        self.norm1 = nn.LayerNorm(c_in, eps=cfg.ln_eps)
        self.pool = _pool(cfg.pool) if stride == 2 else nn.Identity()
        self.attn = RelativeAttention(c_in, c_out, block.heads, block.grid_out, cfg.variant)
        self.norm2 = nn.LayerNorm(c_out, eps=cfg.ln_eps)
        self.ffn = nn.ModuleDict(
            {"fc1": nn.Linear(c_out, block.expanded), "fc2": nn.Linear(block.expanded, c_out)}
        )
        self.act = _gelu(cfg)

    def forward(self, x):
        x = self.shortcut(x) + self.attn(self.pool(_channels_last(self.norm1, x)))
        h = x.permute(0, 2, 3, 1)  # (N, H, W, C) for the token-wise FFN
        h = self.ffn["fc2"](self.act(self.ffn["fc1"](self.norm2(h))))
        return x + h.permute(0, 3, 1, 2)


class Head(nn.Module):
    def __init__(self, width, hidden, classes, eps):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        if hidden:
            self.pre_logits = nn.Linear(width, hidden)
            width = hidden
        self.weight = nn.Parameter(torch.zeros(classes, width))
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x):  # (N, C, H, W)
        h = self.norm(x.mean(dim=(2, 3)))
        if hasattr(self, "pre_logits"):
            h = torch.tanh(self.pre_logits(h))
        return F.linear(h, self.weight, self.bias)


class TorchCoAtNet(nn.Module):
    """CoAtNet for a ``CoAtNetConfig``, NCHW: ``(N, C, H, W) -> (N, num_classes)``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        stem = nn.ModuleDict()
        layers = plan(config)
        for block in stage_blocks(layers, 0):
            if block.kind == "patch":
                stem["patch"] = nn.Conv2d(block.c_in, block.c_out, block.stride, block.stride)
            else:  # 3x3 convolutions, BN between them; the last one has a bias instead
                last = block.index == len(stage_blocks(layers, 0)) - 1
                stem[f"conv{block.index}"] = nn.Conv2d(
                    block.c_in, block.c_out, 3, block.stride, padding=1,
                    bias=last and config.stem_bias,
                )
                if not last:
                    stem[f"norm{block.index}"] = nn.BatchNorm2d(block.c_out)
        self.stem = stem
        self.stage_names = []
        for block in layers:
            if block.stage == 0:
                continue
            stage, name = block.keys
            if stage not in self.stage_names:
                self.add_module(stage, nn.ModuleDict())
                self.stage_names.append(stage)
            make = MBConv if block.kind == "C" else Transformer
            getattr(self, stage)[name] = make(block, config)
        self.head = Head(config.channels[4], config.head_hidden, config.num_classes,
                         config.ln_eps)
        self.act = _gelu(config)

    def forward(self, x):
        for name, layer in self.stem.items():
            x = layer(x)
            if name.startswith("norm"):
                x = self.act(x)
        for name in self.stage_names:
            for block in getattr(self, name).values():
                x = block(x)
        return self.head(x)


# -- weight transfer ------------------------------------------------------------------------


def _torch_name(key):
    """Our dotted key -> the twin's parameter / buffer name.

    ``a.b.w`` -> ``a.b.weight``; ``a.se.w_reduce`` -> ``a.se.reduce.weight``;
    ``gamma``/``beta`` -> ``weight``/``bias``; ``mean``/``var`` -> ``running_mean``/``running_var``;
    the shortcut projection ``proj`` lives in the twin's ``shortcut`` module.
    """
    *path, leaf = key.split(".")
    if path and path[-1] == "proj":
        path = path[:-1] + ["shortcut", "proj"]
    renames = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
               "mean": "running_mean", "var": "running_var", "rel_bias": "rel_bias"}
    if leaf in renames:
        return ".".join(path + [renames[leaf]])
    kind, sub = leaf.split("_", 1)  # w_qkv -> qkv.weight, b_reduce -> reduce.bias
    return ".".join(path + [sub, renames[kind]])


def _to_torch_layout(key, ours, theirs_shape):
    """Our channels-last array -> the layout of a torch tensor of shape ``theirs_shape``."""
    a = onp.asarray(ours)
    if key.endswith("rel_bias"):  # (heads, L) in both
        return a
    if a.ndim == 4:  # dense conv (k, k, Ci, Co) -> (Co, Ci, k, k)
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 3:  # depthwise (k, k, C) -> (C, 1, k, k)
        return a.transpose(2, 0, 1)[:, None]
    if a.ndim == 2 and len(theirs_shape) == 4:  # 1x1 conv or patchify conv
        co, ci, k, _ = theirs_shape
        return a.reshape(k, k, ci, co).transpose(3, 2, 0, 1)
    if a.ndim == 2:  # linear (Ci, Co) -> (Co, Ci)
        return a.T
    return a  # biases, norms, running statistics, rel_bias tables


def _from_torch_layout(key, theirs, ours_ndim):
    t = onp.asarray(theirs)
    if key.endswith("rel_bias"):
        return t
    if ours_ndim == 4:
        return t.transpose(2, 3, 1, 0)
    if ours_ndim == 3:
        return t[:, 0].transpose(1, 2, 0)
    if ours_ndim == 2 and t.ndim == 4:
        co, ci, k, _ = t.shape
        return t.transpose(2, 3, 1, 0).reshape(k * k * ci, co)
    if ours_ndim == 2:
        return t.T
    return t


def _twin_tensors(module):
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def copy_into(module, params, state=None):
    """Copy our ``params`` (and BatchNorm ``state``) into a twin module whose names mirror them.

    Works for the whole network and for single blocks (``MBConv``, ``Transformer``) alike.
    Raises ``ValueError`` if the names do not match one to one. Returns ``module``.
    """
    tensors = _twin_tensors(module)
    flat = {**flatten(params), **flatten(state or {})}
    names = {_torch_name(k): k for k in flat}
    expected = {
        n for n in tensors if n.split(".")[-1] not in ("index", "num_batches_tracked")
    }
    if state is None:
        expected = {n for n in expected if not n.endswith(("running_mean", "running_var"))}
    if set(names) != expected:
        raise ValueError(
            f"parameter names do not match the twin: ours only {sorted(set(names) - expected)[:5]}"
            f", twin only {sorted(expected - set(names))[:5]}"
        )
    with torch.no_grad():
        for name, key in names.items():
            target = tensors[name]
            value = _to_torch_layout(key, flat[key], tuple(target.shape))
            target.copy_(torch.from_numpy(onp.ascontiguousarray(value)))
    return module


def to_torch(params, state, config):
    """Build the PyTorch twin of ``config`` holding exactly ``params`` and ``state``.

    The module's dtype is the parameters' dtype (float64 for oracle comparisons).
    Returns a ``TorchCoAtNet`` in training mode.
    """
    check_params(params, state, config)
    dtype = getattr(torch, onp.asarray(next(iter(flatten(params).values()))).dtype.name)
    return copy_into(TorchCoAtNet(config).to(dtype), params, state)


def from_torch(module, config=None):
    """Read ``(params, state)`` back out of a ``TorchCoAtNet`` (e.g. after training in torch).

    Arrays keep the module's dtype. Returns ``(params, state)`` for ``config`` (default: the
    config the module was built from).
    """
    config = config or module.config
    tensors = _twin_tensors(module)
    ndims = {key: len(spec[1]) for key, spec in flatten(param_spec(config)).items()}
    state_keys = [f"{key}.{s}" for key in flatten(state_spec(config)) for s in ("mean", "var")]
    out = []
    for keys in (ndims, {key: 1 for key in state_keys}):
        flat = {}
        for key, ndim in keys.items():
            theirs = tensors[_torch_name(key)].detach().cpu().numpy()
            flat[key] = onp.ascontiguousarray(_from_torch_layout(key, theirs, ndim))
        out.append(unflatten(flat))
    return out[0], out[1]


def torch_grads_as_params(module, params):
    """The twin's ``.grad`` of every parameter, in our tree layout (for comparisons)."""
    tensors = dict(module.named_parameters())
    flat = {}
    for key, ours in flatten(params).items():
        grad = tensors[_torch_name(key)].grad
        if grad is None:
            raise ValueError(f"the twin has no gradient for {key}; call backward() first")
        flat[key] = onp.ascontiguousarray(
            _from_torch_layout(key, grad.cpu().numpy(), onp.ndim(ours))
        )
    return unflatten(flat)
