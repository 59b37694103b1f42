"""Hyper-parameters of a training run (``TrainConfig``), each checked where it is set.

A value that would silently mean something else is refused with a message naming the field:
counts are integers (``epochs=0`` or ``2.5`` is an error, not "the default" or 2), rates are
finite numbers in their range (``nan`` weight decay, ``inf`` learning rate, ``nan`` gradient
clipping are errors). ``check_hyper`` is the rule for one field; the command line applies the
same rules to its options.
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass

# count fields: minimum value
_COUNTS = {"epochs": 1, "batch_size": 1, "eval_batch_size": 1, "seed": 0}
# rate fields: (low, low included, high or None, high included)
_RATES = {
    "lr": (0.0, False, None, False),
    "min_lr": (0.0, True, None, False),
    "weight_decay": (0.0, True, None, False),
    "momentum": (0.0, True, 1.0, False),
    "warmup_epochs": (0.0, True, None, False),
    "label_smoothing": (0.0, True, 1.0, False),
    "grad_clip": (0.0, True, None, False),
}
_CHOICES = {"optimizer": ("adamw", "sgd")}


def check_hyper(name, value):
    """``value`` for ``TrainConfig`` field ``name``, as an int (counts) or float (rates).

    Raises ``ValueError`` saying what is expected, e.g. "must be a finite number > 0, got inf"
    (the caller puts the field's or option's name in front).
    """
    if name in _COUNTS:
        low = _COUNTS[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"must be an integer >= {low}, got {value!r}")
        return int(value)
    if name in _RATES:
        low, low_in, high, high_in = _RATES[name]
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value >= low if low_in else value > low)
        ok = ok and (high is None or (value <= high if high_in else value < high))
        if not ok:
            where = (f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                     if high is not None else f"{'>=' if low_in else '>'} {low:g}")
            raise ValueError(f"must be a finite number {where}, got {value!r}")
        return float(value)
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ValueError(f"must be one of {', '.join(_CHOICES[name])}, got {value!r}")
        return value
    if name == "augment":
        if not isinstance(value, bool):
            raise ValueError(f"must be True or False, got {value!r}")
        return value
    raise ValueError(f"is not a TrainConfig field (fields: "
                     f"{', '.join(f.name for f in dataclasses.fields(TrainConfig))})")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run (the model's shape lives in ``CoAtNetConfig``).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak learning rate (reached after ``warmup_epochs``), then cosine decay to
            ``min_lr``.
        optimizer: "adamw" (decoupled weight decay on weights only) or "sgd" (momentum).
        weight_decay, momentum: optimizer settings (momentum only for SGD).
        label_smoothing: 0 for plain cross-entropy.
        grad_clip: maximum global gradient norm, 0 for no clipping.
        augment: random crops / flips as the dataset allows (``Dataset.crop_pad``, ``.flip``).
        seed: initialisation, data order and augmentation.
        eval_batch_size: images per evaluation forward pass.

    Every field is checked (``check_hyper``); also ``min_lr <= lr`` and
    ``warmup_epochs <= epochs``.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    grad_clip: float = 0.0
    augment: bool = True
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self):
        for field in dataclasses.fields(self):
            try:
                value = check_hyper(field.name, getattr(self, field.name))
            except ValueError as err:
                raise ValueError(f"{field.name} {err}") from None
            object.__setattr__(self, field.name, value)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs "
                             f"({self.epochs})")
