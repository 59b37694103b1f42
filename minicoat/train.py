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
split, a checkpoint is written atomically, and a line of metrics is appended. Everything
random (data order, augmentation, initialisation) comes from the seed, so the same seed gives
the same numbers, and ``resume`` continues exactly where an interrupted run stopped.
"""

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from autograd.tracer import getval

from .checkpoint import load_checkpoint, restore_rng, save_checkpoint
from .datasets import augment, iterate_minibatches
from .model import check_params, count_params, forward, init_params
from .ops import cross_entropy, value_and_grad
from .optim import clip_grad_norm, make_optimizer
from .schedule import warmup_cosine


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
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0 or self.min_lr < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; min_lr, weight_decay, grad_clip >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


def build_optimizer(hp):
    if hp.optimizer == "adamw":
        return make_optimizer("adamw", weight_decay=hp.weight_decay)
    return make_optimizer("sgd", momentum=hp.momentum, weight_decay=hp.weight_decay)


def train_step(params, state, opt_state, x, y, lr, model_config, hp, optimizer):
    """One update on a minibatch ``x`` ``(B, H, W, C)``, ``y`` ``(B,)``.

    Returns ``(params, state, opt_state, loss, correct)``; ``correct`` counts right answers.
    """
    side = {}

    def loss_fn(p):
        logits, new_state = forward(p, state, x, model_config, train=True, check=False)
        side["state"], side["logits"] = new_state, getval(logits)
        return cross_entropy(logits, y, hp.label_smoothing)

    loss, grads = value_and_grad(loss_fn)(params)
    if hp.grad_clip:
        grads, _ = clip_grad_norm(grads, hp.grad_clip)
    params, opt_state = optimizer.update(params, grads, opt_state, lr)
    correct = int(np.sum(np.argmax(side["logits"], axis=1) == y))
    return params, side["state"], opt_state, float(loss), correct


def predict(params, state, x, model_config, batch_size=256):
    """Logits for ``x`` ``(N, H, W, C)`` in evaluation mode, in batches: ``(N, classes)``."""
    chunks = [
        forward(params, state, x[i : i + batch_size], model_config, train=False, check=False)[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(chunks)


def evaluate(params, state, x, y, model_config, batch_size=256):
    """``(loss, accuracy, predictions)`` on a split, BatchNorm in evaluation mode."""
    logits = predict(params, state, x, model_config, batch_size)
    loss = float(cross_entropy(logits, y))
    predictions = np.argmax(logits, axis=1)
    return loss, float(np.mean(predictions == y)), predictions


def check_compatible(model_config, data):
    """Raise ``ValueError`` if the model's input and classes do not fit the dataset."""
    expected = (*model_config.image_size, model_config.in_channels)
    if tuple(data.image_shape) != expected or model_config.num_classes != data.num_classes:
        raise ValueError(
            f"model {model_config.name!r} takes {expected} images and {model_config.num_classes}"
            f" classes, but dataset {data.name!r} has {data.image_shape} images and "
            f"{data.num_classes} classes; pick a preset made for it (see `minicoat train --help`)"
        )


def train(model_config, data, hp, out_dir=None, resume=None, progress=True, log=print):
    """Train ``model_config`` on ``data`` (a ``datasets.Dataset``) with hyper-parameters ``hp``.

    Writes to ``out_dir`` (if given) after every epoch: ``checkpoint.npz`` (atomic) and
    ``metrics.csv``; at the end ``metrics.json`` (with ``test_accuracy``), ``curves.png``.
    ``resume``: path of a checkpoint of this run to continue from (bit-identical to an
    uninterrupted run).

    Returns the metrics dict (also written to ``metrics.json``), with ``params`` and ``state``
    under the keys ``"params"``/``"state"`` removed from the JSON.
    """
    check_compatible(model_config, data)
    optimizer = build_optimizer(hp)
    steps_per_epoch = math.ceil(len(data.x_train) / hp.batch_size)
    total_steps = hp.epochs * steps_per_epoch
    warmup_steps = int(round(hp.warmup_epochs * steps_per_epoch))

    if resume:
        ckpt = load_checkpoint(resume, expected_config=model_config)
        params, state, opt_state = ckpt.params, ckpt.state, ckpt.opt_state
        rng = restore_rng(ckpt.rng_state)
        history, epoch0 = ckpt.extra["history"], ckpt.extra["epoch"]
        if ckpt.extra.get("hyper") != dataclasses.asdict(hp):
            raise ValueError(
                f"{resume} was written with other hyper-parameters {ckpt.extra.get('hyper')}; "
                f"resume with the same settings"
            )
        step = ckpt.step
        log(f"resumed from {resume} at epoch {epoch0} (step {step})")
    else:
        params, state = init_params(model_config, hp.seed)
        opt_state = optimizer.init(params)
        rng = np.random.default_rng(hp.seed)
        history, epoch0, step = [], 0, 0
    check_params(params, state, model_config)
    log(f"{data.summary()}")
    log(f"model {model_config.name} ({model_config.layout}, {model_config.variant}): "
        f"{count_params(params):,} parameters; {hp.epochs} epochs of {steps_per_epoch} steps")

    started = time.perf_counter()
    for epoch in range(epoch0, hp.epochs):
        epoch_start = time.perf_counter()
        x_train = data.x_train
        if hp.augment and (data.crop_pad or data.flip):
            x_train = augment(x_train, rng, data.crop_pad, data.flip)
        batches = iterate_minibatches(x_train, data.y_train, hp.batch_size, rng)
        bar = _progress(batches, steps_per_epoch, f"epoch {epoch + 1}/{hp.epochs}", progress)
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in bar:
            lr = warmup_cosine(step, total_steps, hp.lr, warmup_steps, hp.min_lr)
            params, state, opt_state, loss, right = train_step(
                params, state, opt_state, xb, yb, lr, model_config, hp, optimizer
            )
            if not math.isfinite(loss):
                raise NonFiniteLoss(
                    f"loss became {loss} at epoch {epoch + 1}, step {step}; training stopped. "
                    f"The last good checkpoint is kept"
                    + (f" in {out_dir}" if out_dir else "")
                    + "; try a lower --lr or --grad-clip"
                )
            step += 1
            loss_sum, correct, seen = loss_sum + loss * len(yb), correct + right, seen + len(yb)
            if progress:
                rate = seen / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{rate:.0f}")
        val_loss, val_acc, _ = evaluate(params, state, data.x_val, data.y_val, model_config,
                                        hp.eval_batch_size)
        seconds = time.perf_counter() - epoch_start
        row = dict(epoch=epoch + 1, step=step, lr=lr, train_loss=loss_sum / seen,
                   train_accuracy=correct / seen, val_loss=val_loss, val_accuracy=val_acc,
                   seconds=seconds, images_per_second=seen / seconds)
        history.append(row)
        log(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            f" | val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.1f}s")
        if out_dir:
            _write_epoch(out_dir, params, state, opt_state, step, rng, model_config, hp, history,
                         epoch + 1, data)

    test_loss, test_acc, predictions = evaluate(params, state, data.x_test, data.y_test,
                                                model_config, hp.eval_batch_size)
    train_seconds = sum(row["seconds"] for row in history)
    metrics = dict(
        dataset=data.name, model=model_config.to_dict(), hyper=dataclasses.asdict(hp),
        parameters=count_params(params), epochs=hp.epochs, steps=step,
        train_loss=history[-1]["train_loss"], train_accuracy=history[-1]["train_accuracy"],
        val_loss=history[-1]["val_loss"], val_accuracy=history[-1]["val_accuracy"],
        test_loss=test_loss, test_accuracy=test_acc,
        train_seconds=train_seconds, wall_seconds=time.perf_counter() - started,
        images_per_second=float(np.mean([row["images_per_second"] for row in history])),
    )
    log(f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}) after {hp.epochs} epochs, "
        f"{train_seconds:.1f}s of training")
    if out_dir:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        from .plots import plot_curves

        plot_curves(history, os.path.join(out_dir, "curves.png"))
    return {**metrics, "history": history, "params": params, "state": state,
            "predictions": predictions}


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
              "seconds", "images_per_second")


def _write_epoch(out_dir, params, state, opt_state, step, rng, model_config, hp, history, epoch,
                 data):
    os.makedirs(out_dir, exist_ok=True)
    extra = dict(history=history, epoch=epoch, hyper=dataclasses.asdict(hp), dataset=data.name,
                 mean=data.mean.tolist(), std=data.std.tolist())
    save_checkpoint(os.path.join(out_dir, "checkpoint.npz"), params, state, model_config,
                    opt_state=opt_state, step=step, rng_state=rng, extra=extra)
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(history)
