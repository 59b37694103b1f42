"""The training loop, resume, failure handling and the command line, on tiny runs."""

import json
import os
import threading

import numpy as np
import pytest

import minicoat as mc
from minicoat.checkpoint import load_checkpoint
from minicoat.cli import main as cli_main
from minicoat.datasets import load_dataset
from minicoat.train import Interrupted, NonFiniteLoss, TrainConfig, train
from minicoat.tree import flatten

TINY = mc.config("coatnet-digits", depths=(1, 1, 1, 1, 1), channels=(8, 8, 16, 32, 32),
                 head_dim=16)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=96, test_subset=64)


def _quiet(*args, **kwargs):
    pass


def test_loss_falls_in_a_few_steps(digits):
    hp = TrainConfig(epochs=6, batch_size=16, lr=5e-3, warmup_epochs=0.5, augment=False)
    result = train(TINY, digits, hp, progress=False, log=_quiet)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < 0.8 * losses[0], f"train loss did not fall: {losses}"
    leaves = flatten(result["params"]).values()
    assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}, "training left float32"


def test_same_seed_same_numbers(digits):
    hp = TrainConfig(epochs=1, batch_size=32, seed=3)
    a = train(TINY, digits, hp, progress=False, log=_quiet)
    b = train(TINY, digits, hp, progress=False, log=_quiet)
    assert a["train_loss"] == b["train_loss"] and a["test_accuracy"] == b["test_accuracy"]
    for key, value in flatten(a["params"]).items():
        assert np.array_equal(value, flatten(b["params"])[key]), key


def test_resume_continues_exactly(digits, tmp_path):
    hp = TrainConfig(epochs=3, batch_size=32, seed=1)
    full = train(TINY, digits, hp, out_dir=str(tmp_path / "full"), progress=False, log=_quiet)

    # An "interrupted" run: the same settings, stopped after epoch 2 (its checkpoint is what
    # a crash in epoch 3 would leave behind), then resumed.
    first = TrainConfig(epochs=3, batch_size=32, seed=1)
    part_dir = str(tmp_path / "part")
    _train_epochs(first, digits, part_dir, stop_after=2)
    resumed = train(TINY, digits, first, out_dir=part_dir,
                    resume=os.path.join(part_dir, "checkpoint.npz"), progress=False, log=_quiet)
    for ours, uninterrupted in zip(resumed["history"], full["history"], strict=True):
        for key in ("step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert ours[key] == uninterrupted[key], (ours["epoch"], key)
    for key, value in flatten(full["params"]).items():
        assert np.array_equal(value, flatten(resumed["params"])[key]), f"{key} differs"
    assert resumed["test_accuracy"] == full["test_accuracy"]


def _train_epochs(hp, data, out_dir, stop_after):
    """Run ``hp`` but stop (as Ctrl-C would) once ``stop_after`` epochs are checkpointed."""
    stop = threading.Event()

    def log(message):  # "epoch k: ..." is logged before epoch k's checkpoint is written
        if message.startswith(f"epoch {stop_after}:"):
            stop.set()

    with pytest.raises(Interrupted, match="Resume with: minicoat train --resume"):
        train(TINY, data, hp, out_dir=out_dir, progress=False, log=log, stop=stop)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    out = str(tmp_path / "run")
    _train_epochs(TrainConfig(epochs=2, batch_size=32), digits, out, stop_after=1)
    good = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    broken = digits.__class__(**{**digits.__dict__, "x_train": digits.x_train * np.nan})
    with pytest.raises(NonFiniteLoss, match=r"loss became nan .* The last checkpoint with "
                                            r"finite parameters and metrics is .*checkpoint.npz "
                                            r"\(epoch 1, step 3\)"):
        train(TINY, broken, TrainConfig(epochs=2, batch_size=32), out_dir=out,
              resume=os.path.join(out, "checkpoint.npz"), progress=False, log=_quiet)
    after = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert after.step == good.step
    for key, value in flatten(good.params).items():
        assert np.array_equal(value, flatten(after.params)[key])


def test_model_that_does_not_fit_the_dataset_is_refused(digits):
    with pytest.raises(ValueError, match=r"takes \(28, 28, 1\) images"):
        train(mc.config("coatnet-mnist"), digits, TrainConfig(epochs=1), progress=False,
              log=_quiet)


def test_resume_with_other_settings_is_refused(digits, tmp_path):
    out = str(tmp_path / "run")
    train(TINY, digits, TrainConfig(epochs=1), out_dir=out, progress=False, log=_quiet)
    with pytest.raises(ValueError, match=r"other hyper-parameters"):
        train(TINY, digits, TrainConfig(epochs=1, lr=1e-2), out_dir=out,
              resume=os.path.join(out, "checkpoint.npz"), progress=False, log=_quiet)


def test_cli_train_and_evaluate_write_their_files(tmp_path, capsys):
    out = str(tmp_path / "run")
    code = cli_main(["train", "--epochs", "1", "--train-subset", "64", "--test-subset", "32",
                     "--batch-size", "32", "--out", out, "--no-progress"])
    assert code == 0
    for name in ("metrics.json", "metrics.csv", "curves.png", "checkpoint.npz", "args.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["train_seconds"] > 0
    assert "test_accuracy" in capsys.readouterr().out

    code = cli_main(["evaluate", "--checkpoint", os.path.join(out, "checkpoint.npz"),
                     "--test-subset", "32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "confusion matrix" in printed
    assert os.path.getsize(os.path.join(out, "confusion.png")) > 0

    # a second run into the same folder must not silently overwrite it
    assert cli_main(["train", "--epochs", "1", "--out", out, "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cli_reports_a_corrupt_checkpoint(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli_main(["evaluate", "--checkpoint", str(path)]) == 2
    assert "not a valid minicoat checkpoint" in capsys.readouterr().err


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--model", "--layout", "--variant", "--epochs",
                   "--batch-size", "--lr", "--seed", "--out", "--resume"):
        assert option in text, option


@pytest.mark.parametrize("command", ["bench", "study", "assignments"])
def test_subcommands_get_their_own_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
