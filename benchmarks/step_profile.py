"""Where a training step's wall time goes, op by op: each kernel's forward and each VJP.

    python benchmarks/step_profile.py                    # coatnet-cifar, batch 32, 20 steps
    python benchmarks/step_profile.py --batch 128 --steps 10
    python benchmarks/step_profile.py --preset coatnet-tiny --batch 8

The step is the bench's (``minicoat.bench.rows.step_item``: forward in training mode,
cross-entropy, backward, AdamW). Each kernel of the op switch is timed around its outermost
call in the forward pass; each node of the backward pass around its VJP (named by the
primitive: ``_matmul_last`` is the VJP of ``linear``'s kernel, ``multiply`` one of
autograd's own, for a traced product), and the adding up of the gradients that reach a node
from several uses (``(add_outgrads)``); AdamW is timed on its own. What is left of the
step (``(rest)``) is the traced forward code outside the kernels and autograd's bookkeeping.
Wall time on the calling thread, kernel threads included: a sampling profiler (py-spy)
misattributes the waits for the GIL of a two-thread step, this does not. The figures of
docs/performance.md's per-op table come from this script.
"""

import argparse
import collections
import statistics
import sys
import time

import autograd.core
from autograd.util import toposort

from minicoat.bench import rows
from minicoat.configs import config
from minicoat.kernels import autodiff
from minicoat.ops import switch


class StepProfile:
    """Patches the op switch, autograd's VJP nodes and the kernel tier's backward pass to add
    up wall time by op (``forward``, ``backward``: op name -> seconds), until ``close()``."""

    def __init__(self):
        self.forward = collections.Counter()
        self.backward = collections.Counter()
        self._depth = 0
        self._names = {}  # VJP node -> the name of its primitive
        self._kernels = dict(switch._kernels)
        self._node_init = autograd.core.VJPNode.__init__
        self._backward_pass = autodiff._backward_pass
        self._adamw = rows.adamw_update
        for name, kernel in self._kernels.items():
            switch._kernels[name] = self._timed(name, kernel)
        profile = self

        def node_init(node, value, fun, args, kwargs, parent_argnums, parents):
            profile._node_init(node, value, fun, args, kwargs, parent_argnums, parents)
            profile._names[node] = getattr(fun, "__name__", repr(fun))

        autograd.core.VJPNode.__init__ = node_init
        autodiff._backward_pass = self._timed_backward_pass
        rows.adamw_update = self._timed("(adamw)", self._adamw)

    def _timed(self, name, f):
        def timed(*args, **kwargs):
            if self._depth:  # a kernel calling another: counted in the outer one
                return f(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.forward[name] += time.perf_counter() - start
                self._depth -= 1

        return timed

    def _timed_backward_pass(self, g, end_node, roots):
        """``autodiff._backward_pass`` with a clock around each VJP and each gradient sum."""
        wanted, found, outgrads = set(roots), {}, {end_node: (g, False)}
        for node in toposort(end_node):
            outgrad = outgrads.pop(node)
            if node in wanted:
                found[node] = outgrad[0]
            start = time.perf_counter()
            ingrads = node.vjp(outgrad[0])
            self.backward[self._names.pop(node, "?")] += time.perf_counter() - start
            node.vjp = None
            start = time.perf_counter()
            for parent, ingrad in zip(node.parents, ingrads, strict=True):
                outgrads[parent] = autodiff._add_outgrads(outgrads.get(parent), ingrad)
            self.backward["(add_outgrads)"] += time.perf_counter() - start
        return [found.get(node) for node in roots]

    def close(self):
        switch._kernels.clear()
        switch._kernels.update(self._kernels)
        autograd.core.VJPNode.__init__ = self._node_init
        autodiff._backward_pass = self._backward_pass
        rows.adamw_update = self._adamw


def profile_step(preset="coatnet-cifar", batch=32, steps=20, warmup=3):
    """``(mean_ms, median_ms, table)``: the step's mean and median time and
    ``[(part, name, ms per step)]``, the forward and backward rows largest first, then AdamW
    and ``(rest)``; the rows add up to the mean."""
    item = rows.step_item(config(preset), batch)
    step = item.numpy["step"]
    profile = StepProfile()
    try:
        for _ in range(warmup):
            step()
        profile.forward.clear()
        profile.backward.clear()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    finally:
        profile.close()
    mean_ms = 1e3 * sum(times) / steps
    update = profile.forward.pop("(adamw)", 0.0)
    table = [("forward", name, 1e3 * s / steps) for name, s in profile.forward.most_common()]
    table += [("backward", name, 1e3 * s / steps) for name, s in profile.backward.most_common()]
    table.append(("update", "(adamw)", 1e3 * update / steps))
    table.append(("", "(rest)", mean_ms - sum(ms for _, _, ms in table)))
    return mean_ms, statistics.median(times) * 1e3, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="coatnet-cifar")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--min-ms", type=float, default=0.5, help="hide rows below this")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.steps < 1:
        parser.error("--batch must be >= 2 (BatchNorm in training mode) and --steps >= 1")
    mean_ms, median_ms, table = profile_step(args.preset, args.batch, args.steps)
    print(f"{args.preset}, batch {args.batch}: {mean_ms:.1f} ms per step (mean of "
          f"{args.steps}; median {median_ms:.1f})\n")
    print("| part | op | ms per step | share |\n|---|---|---:|---:|")
    for part, name, ms in table:
        if ms >= args.min_ms or name == "(rest)":
            print(f"| {part} | {name} | {ms:.2f} | {100 * ms / mean_ms:.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
