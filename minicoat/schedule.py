"""Learning-rate schedules: functions of the step number returning a Python float.

Both share the signature ``(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0)`` so the
training loop can take either by name (``SCHEDULES``). Steps count from 0; a run of
``total_steps`` steps uses steps ``0 .. total_steps - 1``. The result is a Python float, so
it never promotes float32 arrays it multiplies (see ``optim``).
"""

import math


def _check(step, total_steps, warmup_steps):
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                         f"got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def warmup_cosine(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Linear warm-up, then cosine decay from ``base_lr`` to ``min_lr``.

    With ``s = step``, ``W = warmup_steps``, ``T = total_steps``::

        s <  W:  lr = base_lr * (s + 1) / W
        s >= W:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2,
                 p = min(1, (s - W) / (T - W))

    The warm-up starts at ``base_lr / W`` (not 0: a zero first step would be wasted) and
    reaches ``base_lr`` at ``s = W - 1``; the cosine starts at ``base_lr`` at ``s = W`` and
    reaches ``min_lr`` at ``s = T`` (steps beyond stay at ``min_lr``).

    >>> [round(warmup_cosine(s, 10, 1.0, warmup_steps=2), 3) for s in range(11)]
    [0.5, 1.0, 1.0, 0.962, 0.854, 0.691, 0.5, 0.309, 0.146, 0.038, 0.0]
    """
    _check(step, total_steps, warmup_steps)
    base_lr, min_lr = float(base_lr), float(min_lr)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """``base_lr`` at every step, after the same linear warm-up as ``warmup_cosine``.

    ``min_lr`` is unused (accepted for a common signature).

    >>> [constant(s, 10, 1.0, warmup_steps=4) for s in range(6)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    _check(step, total_steps, warmup_steps)
    if step < warmup_steps:
        return float(base_lr) * (step + 1) / warmup_steps
    return float(base_lr)


SCHEDULES = {"cosine": warmup_cosine, "constant": constant}


def get_schedule(name):
    """A schedule function by name: "cosine" (``warmup_cosine``) or "constant"."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]
