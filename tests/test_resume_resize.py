"""A run resumed at another image size (``minicoat train --resume CKPT --image-size H [W]``).

The run used throughout: the tiny digits model of ``test_train`` (S3 and S4 attention on 4x4
and 2x2 grids at 8x8), 3 epochs of 3 steps, stopped after epoch 1 and continued at 16x16.
What is checked: the tables are ``resize_rel_bias`` of the checkpoint's and nothing else
changes; AdamW's moments of each table are resized like it (bilinear: ``v`` stays >= 0), the
step is kept, and the first step at the new size is the AdamW step from exactly that state;
every split is at the new size with the run's own normalisation; the change is recorded; a
later plain ``--resume`` continues at the new size bit for bit, ``evaluate`` uses the size
without being told; bad sizes and checkpoints are refused in one line.
"""

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
from test_runs import StopAfter
from test_train import TINY, _train_epochs

import minicoat as mc
from minicoat.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from minicoat.cli import main as cli_main
from minicoat.datasets import augment, iterate_minibatches, load_dataset
from minicoat.interop import resize_images, resize_opt_state, resize_rel_bias, resize_rel_bias_table
from minicoat.optim import make_optimizer
from minicoat.resume import resize_checkpoint
from minicoat.schedule import warmup_cosine
from minicoat.train import Interrupted, TrainConfig, all_finite, train, train_step
from minicoat.tree import flatten, unflatten

HP = TrainConfig(epochs=3, batch_size=32, seed=1)  # 96 images: 3 steps per epoch
SUBSETS = dict(train_subset=96, test_subset=64)
BIG = TINY.replace(image_size=16)
TABLE = "attn.rel_bias"


def _quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", **SUBSETS)


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", image_size=16, **SUBSETS)


@pytest.fixture(scope="module")
def stopped(digits, tmp_path_factory):
    """A run folder whose checkpoint is the end of epoch 1 (step 3) at 8x8."""
    out = str(tmp_path_factory.mktemp("stopped") / "run")
    _train_epochs(HP, digits, out, stop_after=1)
    return out


@pytest.fixture(scope="module")
def resized_run(stopped, digits16, tmp_path_factory):
    """The stopped run continued at 16x16 to its end (the library call)."""
    out = str(tmp_path_factory.mktemp("resized") / "run")
    shutil.copytree(stopped, out)
    result = train(BIG, digits16, HP, out_dir=out, resume=os.path.join(out, "checkpoint.npz"),
                   progress=False, log=_quiet)
    return out, result


def _copy(stopped, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(stopped, out)
    return out, os.path.join(out, "checkpoint.npz")


def _documented_state(ckpt):
    """What docs/training.md says a resize does, written out leaf by leaf: each table and its
    AdamW moments resized with ``resize_rel_bias_table`` on the block's grid, all else and the
    step kept."""
    grids = {b.name: (b.grid_out, nb.grid_out) for b, nb in
             zip(mc.plan(TINY), mc.plan(BIG), strict=True) if b.kind == "T"}

    def resized(tree):
        flat = dict(flatten(tree))
        for name, (old, new) in grids.items():
            flat[f"{name}.{TABLE}"] = resize_rel_bias_table(flat[f"{name}.{TABLE}"], old, new)
        return flat

    opt = {"m": resized(ckpt.opt_state["m"]), "v": resized(ckpt.opt_state["v"]),
           "step": ckpt.opt_state["step"]}
    return resized(ckpt.params), opt


def _assert_same_params(a, b):
    a, b = flatten(a), flatten(b)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_splits_are_resized_with_the_runs_own_normalisation(digits, digits16):
    for split in ("train", "val", "test"):
        x8, x16 = getattr(digits, f"x_{split}"), getattr(digits16, f"x_{split}")
        assert x16.shape == (len(x8), 16, 16, 1) and x16.dtype == np.float32
        assert np.array_equal(x16, resize_images(x8, (16, 16))), split
    assert np.array_equal(digits16.mean, digits.mean) and np.array_equal(digits16.std, digits.std)
    assert digits16.definition == {**digits.definition, "image_size": [16, 16]}
    assert digits.definition["image_size"] is None
    assert (digits.crop_pad, digits.flip) == (digits16.crop_pad, digits16.flip)
    same = load_dataset("digits", image_size=8, **SUBSETS)  # the images' own size: no resize
    assert same.definition == digits.definition and np.array_equal(same.x_val, digits.x_val)


def test_an_epochs_draws_do_not_depend_on_the_size(stopped, digits, digits16):
    """An epoch stopped in the middle and continued at another size draws the same
    augmentation offsets and order again, so the rest of its batches are the images it had
    not seen yet."""
    state = load_checkpoint(os.path.join(stopped, "checkpoint.npz")).rng_state
    orders = []
    for data in (digits, digits16):
        rng = restore_rng(state)
        augment(data.x_train, rng, data.crop_pad, data.flip)
        orders.append(rng.permutation(len(data.x_train)))
    assert np.array_equal(*orders)


def test_tables_and_their_moments_are_resized_and_nothing_else(stopped, digits16):
    path = os.path.join(stopped, "checkpoint.npz")
    ckpt = load_checkpoint(path)
    moved = resize_checkpoint(path, ckpt, BIG, digits16)
    params, opt = _documented_state(ckpt)
    assert moved.config == BIG
    tables = [k for k in params if k.endswith(TABLE)]
    assert len(tables) == 2  # S3 (4x4 -> 8x8 grid: 49 -> 225 offsets) and S4 (2x2 -> 4x4)
    for key, value in flatten(moved.params).items():
        assert np.array_equal(value, params[key]), key
        assert (value.shape != flatten(ckpt.params)[key].shape) == (key in tables), key
    assert flatten(moved.params)["s3.block0." + TABLE].shape == (2, 225)
    _assert_same_params(moved.params, resize_rel_bias(ckpt.params, TINY, 16)[0])
    for slot in ("m", "v"):
        for key, value in flatten(moved.opt_state[slot]).items():
            assert np.array_equal(value, opt[slot][key]), (slot, key)
            assert value.shape == params[key].shape and value.dtype == params[key].dtype
    assert all(np.all(v >= 0) for v in flatten(moved.opt_state["v"]).values())
    assert moved.opt_state["step"] == ckpt.opt_state["step"] == 3
    _assert_same_params(moved.state, ckpt.state)
    assert moved.extra["resized"] == [{"step": 3, "epoch": 1, "batch": 0, "from": [8, 8],
                                       "to": [16, 16]}]
    assert moved.extra["data"] == digits16.definition
    assert resize_checkpoint(path, moved, BIG, digits16) is moved  # already at that size


def test_the_second_moment_never_goes_negative():
    """Spiky non-negative tables (where a bicubic resize undershoots) stay >= 0, up and down;
    SGD's momentum is resized like the table too."""
    rng = np.random.default_rng(0)
    v = rng.exponential(size=(4, 49)) * (rng.random((4, 49)) < 0.2)  # mostly zeros, spikes
    for old, new in (((4, 4), (8, 8)), ((4, 4), (3, 5)), ((4, 4), (1, 1))):
        out = resize_rel_bias_table(v, old, new)
        assert out.min() >= 0 and out.shape == (4, (2 * new[0] - 1) * (2 * new[1] - 1))
    params, _ = mc.init_params(TINY, 0)
    sgd = make_optimizer("sgd", momentum=0.9)
    state = sgd.init(params)
    moved = resize_opt_state(state, TINY, 16)
    assert flatten(moved["momentum"])["s3.block0." + TABLE].shape == (2, 225)
    assert moved["step"] == 0 and moved.keys() == state.keys()


def test_the_first_step_at_the_new_size_is_adamw_from_the_documented_state(stopped, digits16,
                                                                           tmp_path):
    out, path = _copy(stopped, tmp_path)
    before = load_checkpoint(path)
    with pytest.raises(Interrupted) as info:
        train(BIG, digits16, HP, out_dir=out, resume=path, progress=False, log=_quiet,
              stop=StopAfter(0))
    after = load_checkpoint(info.value.checkpoint)
    assert (after.step, after.extra["epoch"], after.extra["batch"]) == (4, 1, 1)
    # the same step by hand: epoch 2's first batch, drawn from the stored RNG as train does
    params, opt = _documented_state(before)
    rng = restore_rng(before.rng_state)
    x = augment(digits16.x_train, rng, digits16.crop_pad, digits16.flip)
    xb, yb = next(iterate_minibatches(x, digits16.y_train, HP.batch_size, rng))
    lr = warmup_cosine(3, 9, HP.lr, 3, HP.min_lr)
    optimizer = make_optimizer("adamw", weight_decay=HP.weight_decay)
    with mc.implementation("fast"):
        new, _, new_opt, loss, _ = train_step(
            unflatten(params), before.state, {**opt, "m": unflatten(opt["m"]),
                                                      "v": unflatten(opt["v"])},
            xb, yb, lr, BIG, HP, optimizer)
    assert math.isfinite(loss) and all_finite(new, new_opt["m"], new_opt["v"])
    _assert_same_params(after.params, new)
    _assert_same_params(after.opt_state["v"], new_opt["v"])
    assert after.opt_state["step"] == 4


def test_a_resized_run_is_a_run_from_the_documented_state(resized_run, stopped, digits16,
                                                          tmp_path):
    """The resumed run at 16x16 equals an ordinary resume of a checkpoint written by hand with
    the documented state, to the last bit."""
    out, result = resized_run
    ckpt = load_checkpoint(os.path.join(stopped, "checkpoint.npz"))
    params, opt = _documented_state(ckpt)
    extra = {**ckpt.extra, "data": digits16.definition,
             "resized": [{"step": 3, "epoch": 1, "batch": 0, "from": [8, 8], "to": [16, 16]}]}
    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    save_checkpoint(by_hand / "checkpoint.npz", unflatten(params), ckpt.state, BIG,
                    opt_state={"m": unflatten(opt["m"]),
                               "v": unflatten(opt["v"]), "step": opt["step"]},
                    step=ckpt.step, rng_state=ckpt.rng_state, extra=extra)
    plain = train(BIG, digits16, HP, out_dir=str(by_hand),
                  resume=str(by_hand / "checkpoint.npz"), progress=False, log=_quiet)
    _assert_same_params(result["params"], plain["params"])
    assert result["history"] == [{**a, "seconds": b["seconds"],
                                  "images_per_second": b["images_per_second"]}
                                 for a, b in zip(plain["history"], result["history"],
                                                 strict=True)]
    assert all(math.isfinite(row["train_loss"]) for row in result["history"])


def test_the_change_is_recorded(resized_run, digits16):
    out, result = resized_run
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    change = [{"step": 3, "epoch": 1, "batch": 0, "from": [8, 8], "to": [16, 16]}]
    assert ckpt.config == BIG and ckpt.extra["resized"] == change
    assert ckpt.extra["data"] == digits16.definition
    assert [row["image_size"] for row in ckpt.extra["history"]] == ["8x8", "16x16", "16x16"]
    with open(os.path.join(out, "metrics.csv")) as f:
        assert [row["image_size"] for row in csv.DictReader(f)] == ["8x8", "16x16", "16x16"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["resized"] == change and metrics["model"]["image_size"] == [16, 16]
    assert result["resized"] == change


def test_a_plain_resume_after_the_change_continues_at_the_new_size(resized_run, stopped,
                                                                   tmp_path, capsys):
    """Stopped one step after the change, then `minicoat train --resume` with no size: the
    same bits as the run that went on, and `minicoat evaluate` at 16x16 without being told."""
    reference, _ = resized_run
    out, path = _copy(stopped, tmp_path)
    assert cli_main(["train", "--resume", path, "--image-size", "16", "--no-progress"]) == 0
    _assert_same_params(load_checkpoint(path).params,
                        load_checkpoint(os.path.join(reference, "checkpoint.npz")).params)

    out, path = _copy(stopped, tmp_path / "again")
    with pytest.raises(Interrupted) as info:
        train(BIG, load_dataset("digits", image_size=(16, 16), **SUBSETS), HP, out_dir=out,
              resume=path, progress=False, log=_quiet, stop=StopAfter(0))
    capsys.readouterr()
    assert cli_main(["train", "--resume", info.value.checkpoint, "--no-progress"]) == 0
    assert "image size" not in capsys.readouterr().out  # nothing resized this time
    ours, theirs = (load_checkpoint(os.path.join(d, "checkpoint.npz")) for d in (out, reference))
    _assert_same_params(ours.params, theirs.params)
    _assert_same_params(ours.opt_state, theirs.opt_state)
    assert ours.extra["resized"] == theirs.extra["resized"]
    assert [r["val_loss"] for r in ours.extra["history"]] == [
        r["val_loss"] for r in theirs.extra["history"]]
    final = json.load(open(os.path.join(reference, "metrics.json")))
    assert cli_main(["evaluate", "--checkpoint", path]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {final['test_accuracy']:.4f}, loss {final['test_loss']:.4f}" in printed


def test_a_new_run_at_another_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--image-size", "12", "--train-subset", "32", "--test-subset",
                     "16", "--epochs", "1", "--no-progress"]) == 0
    ckpt = load_checkpoint("runs/digits-coatnet-digits-CCTT-seed0-12x12/checkpoint.npz")
    assert ckpt.config.image_size == (12, 12) and ckpt.extra["data"]["image_size"] == [12, 12]
    assert ckpt.extra["resized"] == [] and ckpt.extra["history"][0]["image_size"] == "12x12"


@pytest.mark.parametrize("extra_args, expected", [
    (["--image-size", "10"], "--image-size 10 10: image_size (10, 10) must be divisible by "
                             "the product of the strides"),
    (["--image-size", "16", "6"], "must be divisible by the product of the strides"),
    (["--image-size", "0"], "--image-size: must be an integer >= 1, got '0'"),
    (["--image-size", "-16"], "--image-size: must be an integer >= 1, got '-16'"),
    (["--image-size", "8", "8", "8"], "--image-size takes H or H W (integers >= 1), got 3"),
    (["--image-size", "16", "--lr", "0.1"], "a resumed run keeps its own settings, but --lr"),
])
def test_bad_sizes_are_refused_in_one_line(stopped, tmp_path, capsys, extra_args, expected):
    _, path = _copy(stopped, tmp_path)
    try:  # a bad value is refused by the parser (SystemExit), a bad size by the model
        code = cli_main(["train", "--resume", path, *extra_args, "--no-progress"])
    except SystemExit as parser_exit:
        code = parser_exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert load_checkpoint(path).config == TINY  # nothing was changed


def test_other_checkpoints_and_configs_are_refused(stopped, resized_run, digits, digits16,
                                                   tmp_path, capsys):
    _, path = _copy(stopped, tmp_path)
    ckpt = load_checkpoint(path)
    model = tmp_path / "model.npz"  # a model, not a training checkpoint
    save_checkpoint(model, ckpt.params, ckpt.state, TINY, extra={"dataset": "digits"})
    assert cli_main(["train", "--resume", str(model), "--image-size", "16"]) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        resize_checkpoint(model, load_checkpoint(model), BIG, digits16)
    finished, _ = resized_run
    _, done = _copy(finished, tmp_path / "finished")
    assert cli_main(["train", "--resume", done, "--image-size", "24"]) == 2
    assert "the run has finished its 3 epochs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="only image_size may change"):
        train(BIG.replace(head_dim=8), digits16, HP, resume=path, progress=False, log=_quiet)
    with pytest.raises(ValueError, match=r"takes \(16, 16, 1\) images.*image_size="):
        train(BIG, digits, HP, resume=path, progress=False, log=_quiet)
    crafted = dict(ckpt.extra, resized=[{"step": 3, "epoch": 1, "batch": 0, "from": [8, 8],
                                         "to": [12, 12]}])  # says 12x12, the model is 8x8
    save_checkpoint(path, ckpt.params, ckpt.state, TINY, opt_state=ckpt.opt_state,
                    step=ckpt.step, rng_state=ckpt.rng_state, extra=crafted)
    with pytest.raises(ValueError, match=r"image-size changes .* the last one to the model's"):
        train(TINY, digits, HP, resume=path, progress=False, log=_quiet)


def test_help_says_how(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--image-size H [W ...]" in text
    assert "With --resume: continue the run at this size" in text


def test_a_change_in_the_middle_of_an_epoch(digits, digits16, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(Interrupted) as info:  # stop after step 4: epoch 2, batch 1
        train(TINY, digits, HP, out_dir=out, progress=False, log=_quiet, stop=StopAfter(4))
    result = train(BIG, digits16, HP, out_dir=out, resume=info.value.checkpoint,
                   progress=False, log=_quiet)
    assert result["resized"] == [{"step": 4, "epoch": 1, "batch": 1, "from": [8, 8],
                                  "to": [16, 16]}]
    assert [row["image_size"] for row in result["history"]] == ["8x8", "16x16", "16x16"]
    assert [row["step"] for row in result["history"]] == [3, 6, 9]
