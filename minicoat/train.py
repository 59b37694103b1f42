"""The training loop: one page from a minibatch to a parameter update.

For each minibatch:

1. ``loss(params)`` runs the network in training mode and returns the cross-entropy;
   the BatchNorm running statistics it produces are kept on the side (they are state, not
   something we differentiate).
2. ``value_and_grad`` gives the loss and its gradient for every leaf of the parameter tree
   (autograd's; under the ``fast`` implementation, with a backward pass that frees
   activations as it goes: ``kernels/autodiff.py``).
3. Optionally the gradient is clipped to a maximum global norm.
4. The optimizer (AdamW by default) turns gradients into new parameters, with the learning
   rate from a linear warm-up + cosine schedule.

After each epoch the model is evaluated (BatchNorm in evaluation mode) on the validation
split and, in a run folder (``runs.py``), a checkpoint and the metrics are written
atomically. Everything random (data order, augmentation, initialisation) comes from the seed,
so the same seed gives the same numbers, and ``resume`` continues exactly where a stopped
run left off (bit-identical), from the end of an epoch or from the middle of one.

Two guards stop a run cleanly instead of letting it go on wrong:

- **non-finite values**: a loss or gradient norm that is NaN or infinite stops training before
  the update; so does a non-finite validation loss, parameter or BatchNorm statistic at the end
  of an epoch. Only checkpoints whose parameters and metrics are all finite are ever written,
  and ``NonFiniteLoss`` says which one is the last (or that there is none).
- **Ctrl-C** (SIGINT): the current step finishes, a checkpoint of the exact position is
  written, and ``Interrupted`` says how to resume. A second Ctrl-C stops at once.
"""

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import uuid

import numpy as onp
from autograd.tracer import getval

from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import augment, iterate_minibatches
from .hyper import TrainConfig  # noqa: F401 - minicoat.train.TrainConfig, as before
from .model import check_params, count_params, forward, init_params
from .ops import cross_entropy, value_and_grad
from .optim import clip_grad_norm, make_optimizer
from .resume import Position, resize_checkpoint, resume_state
from .runs import open_run, write_args, write_history, write_results
from .schedule import warmup_cosine
from .tree import flatten


class NonFiniteLoss(RuntimeError):
    """A loss, gradient or metric became NaN or infinite; the message names the last
    checkpoint whose values are all finite (or says there is none)."""


class Interrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C after a step. ``checkpoint`` is the file that holds the
    exact position (None without a run folder); the message says how to resume."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


def build_optimizer(hp):
    if hp.optimizer == "adamw":
        return make_optimizer("adamw", weight_decay=hp.weight_decay)
    return make_optimizer("sgd", momentum=hp.momentum, weight_decay=hp.weight_decay)


def train_step(params, state, opt_state, x, y, lr, model_config, hp, optimizer):
    """One update on a minibatch ``x`` ``(B, H, W, C)``, ``y`` ``(B,)``.

    Returns ``(params, state, opt_state, loss, correct)``; ``correct`` counts right answers.
    Raises ``NonFiniteLoss`` *before* updating anything if the loss or the gradient's global
    norm is NaN or infinite.
    """
    side = {}

    def loss_fn(p):
        logits, new_state = forward(p, state, x, model_config, train=True, check=False)
        side["state"], side["logits"] = new_state, getval(logits)
        return cross_entropy(logits, y, hp.label_smoothing)

    loss, grads = value_and_grad(loss_fn)(params)
    grads, norm = clip_grad_norm(grads, hp.grad_clip or math.inf)  # the norm, clipped or not
    if not (math.isfinite(float(loss)) and math.isfinite(norm)):
        raise NonFiniteLoss(f"loss became {float(loss)} (gradient norm {norm})")
    params, opt_state = optimizer.update(params, grads, opt_state, lr)
    correct = int(onp.sum(onp.argmax(side["logits"], axis=1) == y))
    return params, side["state"], opt_state, float(loss), correct


def predict(params, state, x, model_config, batch_size=256):
    """Logits for ``x`` ``(N, H, W, C)`` in evaluation mode, in batches: ``(N, classes)``."""
    chunks = [
        forward(params, state, x[i : i + batch_size], model_config, train=False, check=False)[0]
        for i in range(0, len(x), batch_size)
    ]
    return onp.concatenate(chunks)


def evaluate(params, state, x, y, model_config, batch_size=256):
    """``(loss, accuracy, predictions)`` on a split, BatchNorm in evaluation mode."""
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty split")
    logits = predict(params, state, x, model_config, batch_size)
    loss = float(cross_entropy(logits, y))
    predictions = onp.argmax(logits, axis=1)
    return loss, float(onp.mean(predictions == y)), predictions


def check_compatible(model_config, data):
    """Raise ``ValueError`` if the model's input and classes do not fit the dataset, or a
    split is empty (better now than after the whole run)."""
    expected = (*model_config.image_size, model_config.in_channels)
    if tuple(data.image_shape) != expected or model_config.num_classes != data.num_classes:
        raise ValueError(
            f"model {model_config.name!r} takes {expected} images and {model_config.num_classes}"
            f" classes, but dataset {data.name!r} has {data.image_shape} images and "
            f"{data.num_classes} classes; pick a preset made for it, or resize the images "
            f"(`load_dataset(..., image_size=)`, `--image-size`; see `minicoat train --help`)"
        )
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"dataset {data.name!r}: the {split} split has {len(x)} images "
                             f"and {len(y)} labels; every split needs at least one image")


def all_finite(*trees):
    """True if every leaf of every tree is finite (no NaN, no inf)."""
    return all(onp.all(onp.isfinite(leaf)) for tree in trees for leaf in flatten(tree).values())


@contextlib.contextmanager
def _interrupts(stop):
    """An event set by Ctrl-C while training runs (``stop`` itself if given)."""
    if stop is not None or threading.current_thread() is not threading.main_thread():
        yield stop if stop is not None else threading.Event()
        return
    event = threading.Event()

    def on_sigint(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt  # pressed twice: stop now
        event.set()
        sys.stderr.write("\nCtrl-C: stopping after this step (press again to stop at once)\n")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def train(model_config, data, hp, out_dir=None, resume=None, progress=True, log=print,
          stop=None, run_args=None):
    """Train ``model_config`` on ``data`` (a ``datasets.Dataset``) with hyper-parameters ``hp``.

    Writes to ``out_dir`` (if given; see ``runs.py``, which also keeps other runs and trainers
    out of it) after every epoch: ``checkpoint.npz`` and ``metrics.csv``; at the end
    ``metrics.json`` (with ``test_accuracy``) and ``curves.png``; ``args.json`` (``run_args``
    and the hyper-parameters) when the run starts. ``resume``: a checkpoint of this run to
    continue from (same config, hyper-parameters and data, else ``ValueError`` naming what
    differs); the result is bit-identical to an uninterrupted run. A ``model_config`` that
    differs from the checkpoint's only in ``image_size``, with ``data`` at that size
    (``load_dataset(..., image_size=)``), continues the run at the new size: tables and their
    optimizer state resized, the change recorded (``resume.resize_checkpoint``). ``stop``: a
    ``threading.Event`` that stops the run like Ctrl-C does (default: Ctrl-C itself).

    Returns the metrics dict (also written to ``metrics.json``), with ``history``,
    ``params``, ``state`` and ``predictions`` added.

    Raises ``NonFiniteLoss`` or ``Interrupted`` (see the module docstring).
    """
    check_compatible(model_config, data)
    optimizer = build_optimizer(hp)
    steps_per_epoch = math.ceil(len(data.x_train) / hp.batch_size)
    total_steps = hp.epochs * steps_per_epoch
    warmup_steps = int(round(hp.warmup_epochs * steps_per_epoch))

    if resume:
        ckpt = load_checkpoint(resume)
        old_size = ckpt.config.image_size
        ckpt = resize_checkpoint(resume, ckpt, model_config, data)  # if the size changes
        at = resume_state(resume, ckpt, hp, data, steps_per_epoch)
        params, state, opt_state = ckpt.params, ckpt.state, ckpt.opt_state
        last_good = (resume, at.epoch, at.step)
        log(f"resumed from {resume} at epoch {at.epoch}, batch {at.batch} (step {at.step})"
            + ("" if old_size == model_config.image_size else
               f" at image size {_size(model_config.image_size)} instead of {_size(old_size)}: "
               f"relative-bias tables and their optimizer state resized"))
    else:
        params, state = init_params(model_config, hp.seed)
        opt_state = optimizer.init(params)
        at = Position(run_id=uuid.uuid4().hex, rng=onp.random.default_rng(hp.seed))
        last_good = None
    check_params(params, state, model_config)
    ckpt_path = os.path.join(out_dir, "checkpoint.npz") if out_dir else None

    def save(position, rng_state):
        extra = dict(run_id=at.run_id, history=history, hyper=dataclasses.asdict(hp),
                     data=data.definition, dataset=data.name, mean=data.mean.tolist(),
                     std=data.std.tolist(), args=run_args, resized=at.resized, **position)
        save_checkpoint(ckpt_path, params, state, model_config, opt_state=opt_state, step=step,
                        rng_state=rng_state, extra=extra)
        write_history(out_dir, history)

    def stopped(why):
        kept = (f"The last checkpoint with finite parameters and metrics is {last_good[0]} "
                f"(epoch {last_good[1]}, step {last_good[2]})" if last_good else
                "No checkpoint with finite parameters and metrics was written"
                + ("" if out_dir else " (no run folder)"))
        return NonFiniteLoss(f"{why}; training stopped. {kept}; try a lower --lr or --grad-clip")

    history, step, rng = at.history, at.step, at.rng
    folder = open_run(out_dir, at.run_id, at.step if resume else None) if out_dir else None
    started = time.perf_counter()
    with folder or contextlib.nullcontext(), _interrupts(stop) as interrupt:
        log(f"{data.summary()}")
        log(f"model {model_config.name} ({model_config.layout}, {model_config.variant}): "
            f"{count_params(params):,} parameters; {hp.epochs} epochs of {steps_per_epoch} "
            f"steps")
        if out_dir and (not resume or not os.path.exists(os.path.join(out_dir, "args.json"))):
            write_args(out_dir, dict(run_id=at.run_id, args=run_args,
                                     hyper=dataclasses.asdict(hp), data=data.definition))
        if out_dir and resume:
            write_history(out_dir, history)  # repairs a kill between checkpoint and csv
        for epoch in range(at.epoch, hp.epochs):
            epoch_rng = rng.bit_generator.state  # where this epoch's draws start
            mid = epoch == at.epoch and at.batch > 0
            loss_sum, correct, seen, spent = at.partial if mid else (0.0, 0, 0, 0.0)
            epoch_start = time.perf_counter() - spent
            x_train = data.x_train
            if hp.augment and (data.crop_pad or data.flip):
                x_train = augment(x_train, rng, data.crop_pad, data.flip)
            batches = iterate_minibatches(x_train, data.y_train, hp.batch_size, rng)
            bar = _progress(batches, steps_per_epoch, f"epoch {epoch + 1}/{hp.epochs}", progress)
            lr = warmup_cosine(step, total_steps, hp.lr, warmup_steps, hp.min_lr)
            for batch, (xb, yb) in enumerate(bar):
                if mid and batch < at.batch:
                    continue  # done before the run was stopped: same batches, same order
                lr = warmup_cosine(step, total_steps, hp.lr, warmup_steps, hp.min_lr)
                try:
                    params, state, opt_state, loss, right = train_step(
                        params, state, opt_state, xb, yb, lr, model_config, hp, optimizer)
                except NonFiniteLoss as err:
                    raise stopped(f"{err} at epoch {epoch + 1}, step {step}") from None
                step += 1
                loss_sum, correct, seen = loss_sum + loss * len(yb), correct + right, seen + len(yb)
                if progress:
                    rate = seen / (time.perf_counter() - epoch_start)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                    img_s=f"{rate:.0f}")
                if interrupt.is_set() and batch + 1 < steps_per_epoch:
                    if not all_finite(params, state):
                        raise stopped(f"at step {step} the parameters are not finite")
                    if out_dir:
                        spent = time.perf_counter() - epoch_start
                        save(dict(epoch=epoch, batch=batch + 1,
                                  partial=[loss_sum, correct, seen, spent]), epoch_rng)
                    raise _interrupted(ckpt_path if out_dir else None, step)
            val_loss, val_acc, _ = evaluate(params, state, data.x_val, data.y_val, model_config,
                                            hp.eval_batch_size)
            if not (math.isfinite(val_loss) and all_finite(params, state)):
                raise stopped(f"after epoch {epoch + 1} the validation loss is {val_loss}"
                              + ("" if all_finite(params, state) else " and the parameters or "
                                 "BatchNorm statistics are not finite"))
            seconds = time.perf_counter() - epoch_start
            history.append(dict(
                epoch=epoch + 1, step=step, lr=lr, train_loss=loss_sum / seen,
                train_accuracy=correct / seen, val_loss=val_loss, val_accuracy=val_acc,
                seconds=seconds, images_per_second=seen / seconds,
                image_size=_size(model_config.image_size)))
            log(f"epoch {epoch + 1}: train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}"
                f" | val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.1f}s")
            if out_dir:
                save(dict(epoch=epoch + 1, batch=0, partial=None), rng)
                last_good = (ckpt_path, epoch + 1, step)
            if interrupt.is_set() and epoch + 1 < hp.epochs:
                raise _interrupted(ckpt_path if out_dir else None, step)

        test_loss, test_acc, predictions = evaluate(params, state, data.x_test, data.y_test,
                                                    model_config, hp.eval_batch_size)
        train_seconds = sum(row["seconds"] for row in history)
        metrics = dict(
            dataset=data.name, model=model_config.to_dict(), hyper=dataclasses.asdict(hp),
            run_id=at.run_id, data=data.definition, resized=at.resized,
            parameters=count_params(params),
            epochs=hp.epochs, steps=step, train_loss=history[-1]["train_loss"],
            train_accuracy=history[-1]["train_accuracy"], val_loss=history[-1]["val_loss"],
            val_accuracy=history[-1]["val_accuracy"], test_loss=test_loss,
            test_accuracy=test_acc, train_seconds=train_seconds,
            wall_seconds=time.perf_counter() - started,
            images_per_second=float(onp.mean([row["images_per_second"] for row in history])),
        )
        log(f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}) after {hp.epochs} epochs, "
            f"{train_seconds:.1f}s of training")
        if out_dir:
            write_results(out_dir, metrics, history)
    return {**metrics, "history": history, "params": params, "state": state,
            "predictions": predictions}


def _size(image_size):
    return f"{image_size[0]}x{image_size[1]}"


def _interrupted(path, step):
    if path is None:
        return Interrupted(f"interrupted at step {step}; nothing was saved (no run folder)")
    return Interrupted(f"interrupted at step {step}; saved {path}. Resume with: minicoat train "
                       f"--resume {path}", checkpoint=path)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
