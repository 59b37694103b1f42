"""Run folders: written only by the run they belong to, one trainer at a time, whole after a kill.

A run folder (``runs/<dataset>-<model>-<layout>-seed<seed>/`` by default) holds::

    args.json       how the run was started (its run id, arguments and hyper-parameters)
    checkpoint.npz  parameters, state, optimizer state, RNG, history, position, data definition
    metrics.csv     one row per finished epoch (rewritten from the checkpoint's history), with
                    the image size it ended at (a run resumed at another size shows the change)
    metrics.json    the final metrics (test accuracy) once the run has finished
    curves.png      learning curves, with metrics.json
    .minicoat.lock  the lock (an advisory ``flock``: released by the kernel when its holder
                    dies, so a killed trainer never leaves a stale lock)

Rules (``open_run``):

- A trainer holds the folder's lock for as long as it runs; a second trainer is refused.
- A new run refuses a folder that holds another run's results (a checkpoint, metrics); a
  folder with nothing but the ``args.json`` of a run killed before its first checkpoint is
  taken over. A resumed run refuses a folder whose checkpoint belongs to another run (other
  run id) or to a later point of the same run.
- Every file is written atomically (``files.atomic_write``), so a kill at any point leaves
  each file whole; temporary files left by killed writers are removed when the lock is taken.
- ``metrics.csv`` is always the checkpoint's history (written right after it, and again
  when a run is resumed), so a kill between the two is repaired by the next start.
"""

import contextlib
import csv
import io
import json
import os

from .files import remove_stale_temporaries, write_text

LOCK = ".minicoat.lock"
RESULTS = ("checkpoint.npz", "metrics.json", "metrics.csv")
CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
              "seconds", "images_per_second")  # numbers, in every row of a run's history
CSV_COLUMNS = CSV_FIELDS + ("image_size",)  # "HxW" the epoch ended at (empty in older runs)


class RunFolderError(ValueError):
    """A run folder that may not be used as asked (the message says what to do instead)."""


def _lock(path):
    """Take the folder's lock without waiting; returns the open lock file."""
    f = open(os.path.join(path, LOCK), "a+")  # noqa: SIM115 - held until the run ends
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunFolderError(f"{path} is in use by another trainer ({holder}); wait for it to "
                             f"finish or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def _stored_run(path):
    """``(run_id, step)`` of the checkpoint in a run folder, or None if there is none."""
    from .checkpoint import load_checkpoint

    ckpt = os.path.join(path, "checkpoint.npz")
    if not os.path.exists(ckpt):
        return None
    try:
        stored = load_checkpoint(ckpt)
    except ValueError as err:
        raise RunFolderError(f"{path} holds a checkpoint that cannot be read ({err}); move it "
                             f"away or choose another --out") from None
    return (stored.extra or {}).get("run_id"), stored.step


@contextlib.contextmanager
def open_run(path, run_id, resume_step=None):
    """Hold run folder ``path`` for run ``run_id`` (created if needed) while the block runs.

    ``resume_step`` is None for a new run, else the step of the checkpoint being resumed.
    Raises ``RunFolderError`` if the folder is another trainer's, holds another run, or is
    not a folder.
    """
    path = os.fspath(path)
    check_folder(path, run_id, resume_step)  # before creating anything
    os.makedirs(path, exist_ok=True)
    lock = _lock(path)
    try:
        remove_stale_temporaries(path, every=True)  # we hold the lock: nobody else writes
        check_folder(path, run_id, resume_step)
        yield path
    finally:
        lock.close()  # releases the lock


def check_folder(path, run_id, resume_step=None):
    """Raise ``RunFolderError`` unless run ``run_id`` may write into ``path`` (see
    ``open_run``); a folder that does not exist yet is fine."""
    path = os.fspath(path)
    if not path:
        raise RunFolderError("the run folder must not be empty (give --out DIR)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(f"{path} is a file, not a folder; choose another --out")
    found = [name for name in RESULTS if os.path.exists(os.path.join(path, name))]
    if resume_step is None and found:
        raise RunFolderError(f"{path} already holds a run ({', '.join(found)}); resume it "
                             f"with --resume {os.path.join(path, 'checkpoint.npz')}, or "
                             f"choose another --out")
    stored = _stored_run(path) if resume_step is not None else None
    if stored is not None:
        other_id, other_step = stored
        if other_id != run_id:
            raise RunFolderError(f"{path} holds another run (run id {other_id}); resume "
                                 f"into its own folder or choose another --out")
        if other_step > resume_step:
            raise RunFolderError(
                f"{path} holds this run at step {other_step}, later than the checkpoint "
                f"being resumed (step {resume_step}); resume from "
                f"{os.path.join(path, 'checkpoint.npz')} or choose another --out")
    elif resume_step is not None and found:
        raise RunFolderError(f"{path} holds results ({', '.join(found)}) but no checkpoint "
                             f"of this run; choose another --out")


def write_args(path, record):
    """``args.json``: how the run was started."""
    write_text(os.path.join(path, "args.json"), json.dumps(record, indent=2) + "\n")


def write_history(path, history):
    """``metrics.csv`` from the checkpoint's history, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text(os.path.join(path, "metrics.csv"), buf.getvalue())


def write_results(path, metrics, history):
    """``metrics.json`` and ``curves.png`` at the end of a run, each atomically."""
    from .plots import plot_curves

    write_text(os.path.join(path, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    plot_curves(history, os.path.join(path, "curves.png"))
