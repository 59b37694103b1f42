"""No run is ever lost or silently changed: run folders, resume, the NaN guard, clean failures.

The kill -9 and Ctrl-C tests run the real command in subprocesses (single-threaded BLAS, so
that every process computes the same bits) and compare the result of the stopped and resumed
run with an uninterrupted one, bit for bit.
"""

import csv
import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_train import _train_epochs

import minicoat as mc
from minicoat.checkpoint import load_checkpoint
from minicoat.cli import main as cli_main
from minicoat.datasets import load_dataset
from minicoat.runs import open_run
from minicoat.train import Interrupted, NonFiniteLoss, TrainConfig, train
from minicoat.tree import flatten

TINY = mc.config("coatnet-digits", depths=(1, 1, 1, 1, 1), channels=(8, 8, 16, 32, 32),
                 head_dim=16)
SMALL_RUN = ["--train-subset", "64", "--test-subset", "32", "--batch-size", "16",
             "--epochs", "5", "--no-progress"]
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
HISTORY_KEYS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss",
                "val_accuracy")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=96, test_subset=64)


def _quiet(*args, **kwargs):
    pass


def _command(*args):
    return [sys.executable, "-m", "minicoat.cli", "train", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of SMALL_RUN, in a subprocess like the runs it is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(_command(*SMALL_RUN, "--out", str(out)), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return load_checkpoint(out / "checkpoint.npz"), json.loads((out / "metrics.json").read_text())


def _assert_same_run(run_dir, reference):
    ckpt, metrics = reference
    ours = load_checkpoint(os.path.join(run_dir, "checkpoint.npz"))
    for key, value in flatten(ckpt.params).items():
        assert np.array_equal(value, flatten(ours.params)[key]), key
    for a, b in zip(ours.extra["history"], ckpt.extra["history"], strict=True):
        assert [a[k] for k in HISTORY_KEYS] == [b[k] for k in HISTORY_KEYS]
    final = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    assert final["test_accuracy"] == metrics["test_accuracy"]
    assert final["test_loss"] == metrics["test_loss"]


def _assert_whole(run_dir):
    """Every file of a run folder is complete and consistent with the checkpoint."""
    names = set(os.listdir(run_dir)) if os.path.isdir(run_dir) else set()
    history = None
    if "checkpoint.npz" in names:
        history = load_checkpoint(os.path.join(run_dir, "checkpoint.npz")).extra["history"]
    if "metrics.csv" in names:
        with open(os.path.join(run_dir, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        assert history is not None and len(history) - 1 <= len(rows) <= len(history)
        for row, kept in zip(rows, history, strict=False):
            assert float(row["val_loss"]) == kept["val_loss"]
    for name in ("args.json", "metrics.json"):
        if name in names:
            json.loads(open(os.path.join(run_dir, name)).read())
    if "curves.png" in names:
        assert open(os.path.join(run_dir, "curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_kill_minus_9_at_any_point_loses_nothing(reference, tmp_path):
    """Four kills: one while starting, three just after an epoch's log line, i.e. while its
    checkpoint and metrics are being written (the window that matters), at random delays."""
    out = tmp_path / "run"
    rng = random.Random(15)
    for when in ("start", "epoch", "epoch", "epoch"):
        resume = ["--resume", str(out / "checkpoint.npz")] if (out / "checkpoint.npz").exists() \
            else ["--out", str(out)]
        proc = subprocess.Popen(_command(*SMALL_RUN, *resume), env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if when == "start":
            time.sleep(rng.uniform(0.2, 0.8))
        else:
            for line in proc.stdout:
                if line.startswith("epoch "):
                    break
            time.sleep(rng.uniform(0.0, 0.08))
        proc.kill()
        proc.communicate()
        _assert_whole(out)
    resume = ["--resume", str(out / "checkpoint.npz")] if (out / "checkpoint.npz").exists() \
        else ["--out", str(out)]
    done = subprocess.run(_command(*SMALL_RUN, *resume), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_whole(out)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # leftovers were removed
    _assert_same_run(out, reference)


def test_ctrl_c_stops_after_a_step_saves_and_prints_the_resume_command(reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(*SMALL_RUN, "--out", str(out)), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch 1:"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("minicoat train: interrupted at step") and "Traceback" not in err
    command = last.split("Resume with: ")[1].split()
    assert command[:3] == ["minicoat", "train", "--resume"]
    stopped = load_checkpoint(command[3])
    assert stopped.step >= 4 and stopped.extra["run_id"]
    done = subprocess.run([sys.executable, "-m", "minicoat.cli", *command[1:], "--no-progress"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, reference)


class StopAfter:
    """A stop event that turns on after ``n`` steps (train asks it once per step)."""

    def __init__(self, n):
        self.n = n

    def is_set(self):
        self.n -= 1
        return self.n < 0


def test_resume_from_the_middle_of_an_epoch_is_bit_identical(digits, tmp_path):
    hp = TrainConfig(epochs=2, batch_size=32, seed=2)  # 3 steps per epoch
    full = train(TINY, digits, hp, out_dir=str(tmp_path / "full"), progress=False, log=_quiet)
    part = str(tmp_path / "part")
    with pytest.raises(Interrupted) as info:
        train(TINY, digits, hp, out_dir=part, progress=False, log=_quiet, stop=StopAfter(4))
    stopped = load_checkpoint(info.value.checkpoint)
    assert (stopped.step, stopped.extra["epoch"], stopped.extra["batch"]) == (4, 1, 1)
    resumed = train(TINY, digits, hp, out_dir=part, resume=info.value.checkpoint,
                    progress=False, log=_quiet)
    for key, value in flatten(full["params"]).items():
        assert np.array_equal(value, flatten(resumed["params"])[key]), key
    assert [r["train_loss"] for r in resumed["history"]] == [
        r["train_loss"] for r in full["history"]]
    assert resumed["test_accuracy"] == full["test_accuracy"]


# -- run folders -------------------------------------------------------------------------------


def test_resume_without_out_writes_into_its_own_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = ["--train-subset", "32", "--test-subset", "16", "--epochs", "1", "--no-progress"]
    assert cli_main(["train", *small]) == 0  # run A, in the default folder
    a = tmp_path / "runs" / "digits-coatnet-digits-CCTT-seed0" / "checkpoint.npz"
    before = a.read_bytes()
    assert cli_main(["train", *small, "--out", "b"]) == 0  # run B, same settings
    os.remove(tmp_path / "b" / "metrics.json")
    assert cli_main(["train", *small, "--resume", "b/checkpoint.npz"]) == 0
    assert a.read_bytes() == before  # run A untouched
    assert (tmp_path / "b" / "metrics.json").exists()


def test_a_folder_holding_another_run_is_refused(digits, tmp_path, capsys):
    hp = TrainConfig(epochs=1, batch_size=32)
    train(TINY, digits, hp, out_dir=str(tmp_path / "a"), progress=False, log=_quiet)
    train(TINY, digits, hp, out_dir=str(tmp_path / "b"), progress=False, log=_quiet)
    with pytest.raises(ValueError, match=r"b holds another run \(run id"):
        train(TINY, digits, hp, out_dir=str(tmp_path / "b"),
              resume=str(tmp_path / "a" / "checkpoint.npz"), progress=False, log=_quiet)
    with pytest.raises(ValueError, match="a already holds a run"):
        train(TINY, digits, hp, out_dir=str(tmp_path / "a"), progress=False, log=_quiet)


def test_a_second_trainer_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with open_run(out, "someone-else"):
        code = cli_main(["train", "--epochs", "1", "--out", str(out), "--no-progress"])
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert "is in use by another trainer (pid" in err and len(err.splitlines()) == 1
    assert not (out / "args.json").exists()


def test_a_kill_between_checkpoint_and_csv_leaves_both_whole(digits, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    hp = TrainConfig(epochs=2, batch_size=32)
    _train_epochs(hp, digits, out, stop_after=1)
    stale = os.path.join(out, f".checkpoint.npz.{2**22 + 1}.deadbeef.tmp")  # a killed save
    open(stale, "wb").write(b"PK\x03\x04 half")

    def die(*args, **kwargs):  # the process dies while writing metrics.csv
        raise SystemExit("killed")

    monkeypatch.setattr(csv.DictWriter, "writerows", die)
    with pytest.raises(SystemExit):
        train(TINY, digits, hp, out_dir=out, resume=os.path.join(out, "checkpoint.npz"),
              progress=False, log=_quiet)
    monkeypatch.undo()
    assert not os.path.exists(stale)
    _assert_whole(out)
    with open(os.path.join(out, "metrics.csv")) as f:
        assert len(list(csv.DictReader(f))) == 1  # the old file, whole
    train(TINY, digits, hp, out_dir=out, resume=os.path.join(out, "checkpoint.npz"),
          progress=False, log=_quiet)
    with open(os.path.join(out, "metrics.csv")) as f:
        assert len(list(csv.DictReader(f))) == 2


# -- resume and evaluate use the run's own data ----------------------------------------------


def test_resume_with_other_data_is_refused_naming_the_field(digits, tmp_path, capsys):
    out = str(tmp_path / "run")
    hp = TrainConfig(epochs=2, batch_size=32)
    _train_epochs(hp, digits, out, stop_after=1)
    ckpt = os.path.join(out, "checkpoint.npz")
    for other, field in ((load_dataset("digits", train_subset=64, test_subset=64),
                          "train_subset: 96 \\(run\\) != 64 \\(now\\)"),
                         (load_dataset("digits", test_subset=64), "train_subset: 96"),
                         (dataclasses.replace(digits, definition={
                             **digits.definition,
                             "sha256": {**digits.definition["sha256"], "train": "0" * 64}}),
                          "sha256.train")):
        with pytest.raises(ValueError, match=f"the data differ from the run's: .*{field}"):
            train(TINY, other, hp, out_dir=out, resume=ckpt, progress=False, log=_quiet)
    code = cli_main(["train", "--resume", ckpt, "--train-subset", "64"])
    assert code == 2
    assert "--train-subset 64 (the run's: 96)" in capsys.readouterr().err


def test_other_files_give_another_data_definition(tmp_path):
    from test_datasets import fake_mnist

    fake_mnist(tmp_path, sub="mnist")
    a = load_dataset("mnist", data_dir=tmp_path).definition
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one pixel
    path.write_bytes(bytes(data))
    b = load_dataset("mnist", data_dir=tmp_path).definition
    assert a["sha256"]["train"] != b["sha256"]["train"] or a["sha256"]["val"] != b["sha256"]["val"]
    assert a["sha256"]["test"] == b["sha256"]["test"]


def test_evaluate_uses_the_stored_normalisation_and_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--train-subset", "48", "--test-subset", "40", "--epochs", "1",
                     "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(out / "checkpoint.npz")]) == 0
    printed = capsys.readouterr().out
    assert (f"digits test: accuracy {metrics['test_accuracy']:.4f}, loss "
            f"{metrics['test_loss']:.4f} (40 images)") in printed


# -- an honest NaN guard ---------------------------------------------------------------------


def test_a_diverged_epoch_is_never_kept_as_the_last_good_checkpoint(digits, tmp_path):
    out = tmp_path / "run"
    with np.errstate(all="ignore"), pytest.raises(NonFiniteLoss) as info:
        train(TINY, digits, TrainConfig(epochs=3, batch_size=32, lr=1e3), out_dir=str(out),
              progress=False, log=_quiet)
    message = str(info.value)
    if (out / "checkpoint.npz").exists():
        kept = load_checkpoint(out / "checkpoint.npz")
        assert all(np.isfinite(r["val_loss"]) for r in kept.extra["history"])
        assert all(np.all(np.isfinite(v)) for v in flatten(kept.params).values())
        assert "The last checkpoint with finite parameters and metrics is" in message
    else:
        assert "No checkpoint with finite parameters and metrics was written" in message


def test_no_checkpoint_is_claimed_when_none_exists(digits, tmp_path):
    broken = dataclasses.replace(digits, x_train=digits.x_train * np.nan)
    with pytest.raises(NonFiniteLoss, match="loss became nan .* No checkpoint with finite"):
        train(TINY, broken, TrainConfig(epochs=2), out_dir=str(tmp_path / "run"),
              progress=False, log=_quiet)
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_a_non_finite_gradient_stops_before_the_update(digits, monkeypatch):
    import minicoat.train as train_module

    real = train_module.value_and_grad

    def nan_gradients(f):
        def run(params):
            loss, grads = real(f)(params)
            grads["head"]["b"] = grads["head"]["b"] * np.nan
            return loss, grads
        return run

    monkeypatch.setattr(train_module, "value_and_grad", nan_gradients)
    with pytest.raises(NonFiniteLoss, match=r"gradient norm nan\) at epoch 1, step 0"):
        train(TINY, digits, TrainConfig(epochs=1), progress=False, log=_quiet)


def test_an_empty_test_split_is_refused_before_training(digits, tmp_path):
    empty = dataclasses.replace(digits, x_test=digits.x_test[:0], y_test=digits.y_test[:0])
    with pytest.raises(ValueError, match="the test split has 0 images"):
        train(TINY, empty, TrainConfig(epochs=1), out_dir=str(tmp_path / "run"),
              progress=False, log=_quiet)
    assert not (tmp_path / "run").exists()


# -- options and clean failures ----------------------------------------------------------------


@pytest.mark.parametrize("option, value, expected", [
    ("--epochs", "0", "--epochs: must be an integer >= 1"),
    ("--epochs", "2.5", "--epochs: expected an integer"),
    ("--batch-size", "-3", "--batch-size: must be an integer >= 1"),
    ("--lr", "inf", "--lr: must be a finite number > 0"),
    ("--lr", "0", "--lr: must be a finite number > 0"),
    ("--weight-decay", "nan", "--weight-decay: must be a finite number >= 0"),
    ("--grad-clip", "nan", "--grad-clip: must be a finite number >= 0"),
    ("--warmup-epochs", "inf", "--warmup-epochs: must be a finite number >= 0"),
    ("--label-smoothing", "1", "--label-smoothing: must be a finite number in [0, 1)"),
    ("--seed", "-1", "--seed: must be an integer >= 0"),
    ("--train-subset", "0", "--train-subset: must be an integer >= 1"),
    ("--out", "", "--out: must not be empty"),
])
def test_every_option_is_checked(option, value, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(["train", option, value, "--train-subset", "16", "--test-subset", "8",
                  "--no-progress"] if option != "--train-subset" else
                 ["train", option, value, "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_hyper_parameters_are_checked_in_the_library_too():
    for bad, message in ((dict(epochs=0), "epochs must be an integer >= 1"),
                         (dict(epochs=True), "epochs must be an integer"),
                         (dict(lr=float("inf")), "lr must be a finite number > 0"),
                         (dict(grad_clip=float("nan")), "grad_clip must be a finite"),
                         (dict(warmup_epochs=5, epochs=2), "warmup_epochs .* must not exceed"),
                         (dict(optimizer="adam"), "optimizer must be one of adamw, sgd")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)


@pytest.mark.parametrize("config_field", [dict(in_channels=1.5), dict(depths=(2.7, 1, 1, 1, 1)),
                                          dict(image_size=8.0), dict(num_classes=True)])
def test_float_config_fields_are_refused(config_field):
    with pytest.raises(ValueError, match="must be an integer"):
        mc.config("coatnet-digits", **config_field)


def test_out_an_existing_file_is_one_clean_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert cli_main(["train", "--out", str(tmp_path / "taken"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("taken is a file, not a folder; choose another --out")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "a read-only file system"),
                                        (errno.EACCES, "no permission")])
def test_os_errors_are_one_clean_line(code, hint, tmp_path, monkeypatch, capsys):
    import minicoat.files as files

    real_open = os.open

    def failing_open(path, flags, *args):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(files.os, "open", failing_open)
    out = tmp_path / "run"
    assert cli_main(["train", "--epochs", "1", "--train-subset", "16", "--test-subset", "8",
                     "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and os.strerror(code) in err and hint in err, err
    assert "args.json" in err  # names the file


def test_a_broken_run_record_is_one_clean_line(digits, tmp_path, capsys):
    out = tmp_path / "run"
    params, state = mc.init_params(mc.config("coatnet-digits"), 0)
    out.mkdir()
    mc.save_checkpoint(out / "checkpoint.npz", params, state, mc.config("coatnet-digits"),
                       extra={"hyper": {"epochs": 1}})
    assert cli_main(["train", "--resume", str(out / "checkpoint.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.npz" in err, err


def test_evaluate_refuses_a_crafted_normalisation_in_one_line(tmp_path, capsys):
    config = mc.config("coatnet-digits")
    params, state = mc.init_params(config, 0)
    mc.save_checkpoint(tmp_path / "c.npz", params, state, config,
                       extra={"mean": "abc", "std": [1.0]})
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.npz: the stored normalisation" in err, err
