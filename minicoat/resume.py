"""Where a stopped run resumes: the position a checkpoint records, checked before it is used.

A training checkpoint's ``extra`` holds the run's record::

    run_id    a random id given when the run starts (``runs.py`` keeps other runs out)
    history   one row of metrics per finished epoch
    epoch     epochs finished; batch: batches of the next epoch finished (0 at an epoch's end)
    partial   [loss_sum, correct, seen, seconds] of that epoch so far (None at an epoch's end)
    hyper     the ``TrainConfig`` (as a dict)
    data      the ``Dataset.definition`` (dataset, subsets, SHA-256 of each split, mean, std)
    dataset, mean, std, args   the dataset's name, its normalisation, the command's arguments
    resized   the run's changes of image size, oldest first: [{"step", "epoch", "batch",
              "from": [H, W], "to": [H, W]}, ...] (empty if it never changed)

and its RNG state is the generator's state at the start of epoch ``epoch``, so the epoch's
augmentation and order are drawn again exactly; the ``batch`` batches already done are
skipped. ``resume_state`` refuses (naming the field) a checkpoint whose hyper-parameters or
data differ from the run being resumed, or whose record is not self-consistent.

A run may continue at another image size (``resize_checkpoint``; the paper fine-tunes at 384
from 224 this way): the model config's ``image_size`` changes, every relative-bias table and
the optimizer's slots of it are resized (``interop.resize``), the data definition records the
new size, and the change is appended to ``resized``. Nothing else may differ.
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as onp

from .checkpoint import config_differences, restore_rng
from .datasets import data_differences
from .interop.resize import resize_opt_state, resize_rel_bias
from .model import check_params
from .runs import CSV_FIELDS


@dataclass
class Position:
    """The run's id, RNG and history, and how far it got (see the module docstring)."""

    run_id: str
    rng: onp.random.Generator
    history: list = field(default_factory=list)
    epoch: int = 0
    batch: int = 0
    partial: tuple = None
    step: int = 0
    resized: list = field(default_factory=list)


def _integer(value, low, high):
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and low <= value <= high)


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_training_checkpoint(path, ckpt):
    if not isinstance(ckpt.extra, dict) or ckpt.opt_state is None or ckpt.rng_state is None:
        raise ValueError(f"{path} is not a training checkpoint (it has no run record, optimizer "
                         f"or RNG state): it can be evaluated, not resumed")


def resize_checkpoint(path, ckpt, config, data):
    """Checkpoint ``ckpt`` (read from ``path``) moved to ``config.image_size``, for resuming
    its run on ``data`` (already at that size); ``ckpt`` itself if the size is its own.

    The parameters' relative-bias tables are resized (``resize_rel_bias``), and so are the
    optimizer's slots of them (``resize_opt_state``: AdamW's ``m`` and ``v``, SGD's momentum,
    bilinearly, so ``v`` stays >= 0; the step count is kept); BatchNorm statistics do not depend
    on the size. The run record gets the data's definition of the size and a ``resized``
    entry (step, epoch, batch, from, to). ``ValueError`` if ``config`` differs in anything but
    ``image_size``, ``ckpt`` is not a training checkpoint, or its run has finished.
    """
    differences = config_differences(ckpt.config, config)
    if not differences:
        return ckpt
    old, new = ckpt.config.image_size, config.image_size
    if ckpt.config.replace(image_size=new) != config:
        raise ValueError(f"{path} was saved with another config (stored != expected): "
                         + "; ".join(differences) + "; only image_size may change on resume")
    _is_training_checkpoint(path, ckpt)
    epochs = (ckpt.extra.get("hyper") or {}).get("epochs")
    if ckpt.extra.get("epoch") == epochs:
        raise ValueError(f"{path}: the run has finished its {epochs} epochs, so nothing is left "
                         f"to train at {new[0]}x{new[1]}; stop a run (Ctrl-C) where it should "
                         f"change size, or evaluate this one there (minicoat evaluate "
                         f"--image-size)")
    params, _ = resize_rel_bias(ckpt.params, ckpt.config, new)
    opt_state = resize_opt_state(ckpt.opt_state, ckpt.config, new)
    check_params(params, ckpt.state, config)  # nothing else in the tree depends on the size
    extra = dict(ckpt.extra)
    if isinstance(extra.get("data"), dict) and data.definition is not None:
        extra["data"] = {**extra["data"], "image_size": data.definition.get("image_size")}
    change = {"step": ckpt.step, "epoch": extra.get("epoch"), "batch": extra.get("batch", 0),
              "from": list(old), "to": list(new)}
    extra["resized"] = [*(extra.get("resized") or []), change]
    return dataclasses.replace(ckpt, params=params, opt_state=opt_state, config=config,
                               extra=extra)


def _check_resized(path, resized, step, image_size):
    """The ``resized`` record: changes in step order, each from the size before to another,
    the last one to ``image_size``."""
    def size(v):
        return isinstance(v, list) and len(v) == 2 and all(_integer(n, 1, 1 << 20) for n in v)

    ok = isinstance(resized, list) and all(
        isinstance(r, dict) and _integer(r.get("step"), 0, step) and size(r.get("from"))
        and size(r.get("to")) for r in resized)
    ok = ok and all(a["to"] == b["from"] and a["step"] <= b["step"]
                    for a, b in zip(resized, resized[1:], strict=False))
    if not ok or (resized and tuple(resized[-1]["to"]) != tuple(image_size)):
        raise ValueError(f"{path}: the run record's image-size changes are {resized!r:.120}; "
                         f"expected a list of {{step, epoch, batch, from: [H, W], to: [H, W]}} "
                         f"in step order, the last one to the model's {tuple(image_size)}")


def resume_state(path, ckpt, hp, data, steps_per_epoch):
    """The ``Position`` stored in checkpoint ``ckpt`` (read from ``path``) of a run with
    hyper-parameters ``hp`` on dataset ``data``; ``ValueError`` naming what differs."""
    _is_training_checkpoint(path, ckpt)
    extra = ckpt.extra
    stored = extra.get("hyper")
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: the run record has no hyper-parameters")
    now = dataclasses.asdict(hp)
    diff = [f"{k}: {stored.get(k)!r} (run) != {v!r} (now)" for k, v in now.items()
            if stored.get(k) != v] + [f"{k}: unknown" for k in stored if k not in now]
    if diff:
        raise ValueError(f"{path} was written with other hyper-parameters: {'; '.join(diff)}; "
                         f"resume with the run's own settings (`minicoat train --resume "
                         f"{path}` alone uses them)")
    if isinstance(extra.get("data"), dict) and data.definition is not None:
        diff = data_differences(extra["data"], data.definition)
    else:  # a checkpoint from before data definitions: name and normalisation
        diff = [f"{k}: {extra.get(k)!r} (run) != {v!r} (now)" for k, v in (
            ("dataset", data.name), ("mean", data.mean.tolist()), ("std", data.std.tolist()))
            if extra.get(k) != v]
    if diff:
        raise ValueError(f"{path}: the data differ from the run's: {'; '.join(diff)}; resume "
                         f"with the run's own data (same --dataset, --train-subset, "
                         f"--test-subset and files)")

    history, epoch, batch = extra.get("history"), extra.get("epoch"), extra.get("batch", 0)
    partial = extra.get("partial")
    if not isinstance(history, list) or not all(
            isinstance(row, dict) and all(_number(row.get(k)) for k in CSV_FIELDS)
            for row in history):
        raise ValueError(f"{path}: the run record's history is not a list of metric rows "
                         f"with {', '.join(CSV_FIELDS)}")
    if not _integer(epoch, 0, hp.epochs) or len(history) != epoch:
        raise ValueError(f"{path}: the run record says epoch {epoch!r} with {len(history)} "
                         f"rows of history; expected 0..{hp.epochs} and one row per epoch")
    if not _integer(batch, 0, steps_per_epoch - 1) or (batch and epoch == hp.epochs):
        raise ValueError(f"{path}: the run record says batch {batch!r}; an epoch has "
                         f"{steps_per_epoch} batches")
    if batch and not (isinstance(partial, list) and len(partial) == 4
                      and all(_number(v) for v in partial)):
        raise ValueError(f"{path}: the run record stopped mid-epoch but its partial sums "
                         f"are {partial!r:.80}")
    if ckpt.step != epoch * steps_per_epoch + batch:
        raise ValueError(f"{path}: step {ckpt.step} does not match epoch {epoch} and batch "
                         f"{batch} of {steps_per_epoch}-step epochs")
    run_id = extra.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise ValueError(f"{path}: the run id is {run_id!r}, not a string")
    resized = extra.get("resized", [])
    _check_resized(path, resized, ckpt.step, ckpt.config.image_size)
    return Position(run_id=run_id, rng=restore_rng(ckpt.rng_state), history=history,
                    resized=resized,
                    epoch=epoch, batch=batch,
                    partial=(float(partial[0]), int(partial[1]), int(partial[2]),
                             float(partial[3])) if batch else None,
                    step=ckpt.step)
