"""The ``minicoat`` command: train, evaluate, bench, study, assignments, convert.

``minicoat train`` with no arguments trains the ``coatnet-digits`` preset on the 8x8 UCI
digits that ship inside the package, so it needs no network and no data files.
``minicoat train --resume RUN/checkpoint.npz`` continues a stopped run with its own settings
and data, in its own folder (with ``--image-size``, at another image size). Every option is
checked where it is parsed, and every expected failure (a bad option, a missing, hostile or
unwritable file, a full disk, a run folder in use) ends with one line naming the file or
option and what to do, and a non-zero exit status:
2 for errors, 1 when training diverged, 130 when it was interrupted (Ctrl-C).
"""

import argparse
import errno
import os
import sys

DEFAULT_MODEL = {  # dataset -> the small preset made for its image size and classes
    "digits": "coatnet-digits",
    "shapes": "coatnet-shapes",
    "mnist": "coatnet-mnist",
    "fashion-mnist": "coatnet-mnist",
    "cifar10": "coatnet-cifar",
}
DEFAULT_EPOCHS = {"digits": 15, "shapes": 20, "mnist": 10, "fashion-mnist": 10, "cifar10": 30}
MODEL_OPTIONS = ("layout", "variant", "pool", "gelu")  # CoAtNetConfig fields set by options
HYPER_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "warmup_epochs",
                 "label_smoothing", "grad_clip", "augment", "seed")  # TrainConfig fields
DATA_OPTIONS = ("dataset", "train_subset", "test_subset")  # what defines the run's data


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _hyper_type(field):
    """An argparse type applying ``TrainConfig``'s rule for ``field``."""
    from .hyper import check_hyper

    parse = int if field in ("epochs", "batch_size", "seed") else float

    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check_hyper(field, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _path(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _add_data_arguments(p):
    from .datasets import DATASETS

    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="dataset (train default: digits, carried inside the package; evaluate "
                        "default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, type=_path,
                   help="folder with MNIST IDX / CIFAR-10 binary files (default: "
                        "$MINICOAT_DATA_DIR or ~/.cache/minicoat)")
    p.add_argument("--download", action="store_true",
                   help="download missing MNIST / Fashion-MNIST / CIFAR-10 files (SHA-256 checked)")
    p.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on the first N images of the (fixed, shuffled) train split")
    p.add_argument("--test-subset", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N images of the test split")


def _add_implementation_argument(p):
    p.add_argument("--implementation", choices=("traced", "readable", "fast"), default="fast",
                   help="which implementation of the ops runs: traced (autograd differentiates "
                        "the plain forward), readable (the hand-written VJPs of minicoat/ops) or "
                        "fast (the kernels; default). All three give the same numbers.")


def build_parser():
    parser = _Parser(
        prog="minicoat",
        description="An educational pure-NumPy CoAtNet (Dai et al. 2021) with autograd gradients.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a CoAtNet and write metrics, curves and a checkpoint",
                       description="Train a CoAtNet. Writes OUT/metrics.json (test_accuracy, "
                       "train_loss, timings), OUT/metrics.csv per epoch, OUT/curves.png and "
                       "OUT/checkpoint.npz (rewritten atomically after every epoch). Ctrl-C "
                       "stops after the current step, saves, and prints the resume command.")
    _add_data_arguments(t)
    t.add_argument("--model", default=None, metavar="PRESET",
                   help="model preset (default: the small preset for the dataset: "
                        + ", ".join(f"{k} -> {v}" for k, v in DEFAULT_MODEL.items()) + ")")
    t.add_argument("--layout", choices=("CCCC", "CCCT", "CCTT", "CTTT", "VIT_REL"), default=None,
                   help="stage types of S1-S4 (default: the preset's, CCTT)")
    t.add_argument("--variant", choices=("pre", "post"), default=None,
                   help="relative attention: pre = sum-then-softmax (paper), post = "
                        "softmax-then-sum")
    t.add_argument("--pool", choices=("max", "avg"), default=None,
                   help="shortcut pool of downsampling blocks (paper: max)")
    t.add_argument("--gelu", choices=("none", "tanh"), default=None,
                   help="exact (none) or tanh-approximated GELU")
    t.add_argument("--epochs", type=_hyper_type("epochs"), default=None,
                   help="epochs, >= 1 (default per dataset: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    t.add_argument("--batch-size", type=_hyper_type("batch_size"), default=None,
                   help="images per step (default 32)")
    t.add_argument("--lr", type=_hyper_type("lr"), default=None,
                   help="peak learning rate, > 0 (default 2e-3)")
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default=None, help="default adamw")
    t.add_argument("--weight-decay", type=_hyper_type("weight_decay"), default=None,
                   help=">= 0 (default 0.05)")
    t.add_argument("--warmup-epochs", type=_hyper_type("warmup_epochs"), default=None,
                   help="0 .. epochs (default 1)")
    t.add_argument("--label-smoothing", type=_hyper_type("label_smoothing"), default=None,
                   help="in [0, 1) (default 0.1)")
    t.add_argument("--grad-clip", type=_hyper_type("grad_clip"), default=None,
                   help="max gradient norm, >= 0 (default 0: off)")
    t.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   default=None, help="no random crops / flips")
    t.add_argument("--seed", type=_hyper_type("seed"), default=None, help=">= 0 (default 0)")
    t.add_argument("--out", default=None, metavar="DIR", type=_path,
                   help="run folder (default: runs/<dataset>-<model>-<layout>-seed<seed>; "
                        "with --resume, the checkpoint's own folder)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT", type=_path,
                   help="continue a run from its checkpoint.npz, with the run's own settings "
                        "and data (options given must agree with them)")
    t.add_argument("--image-size", type=_positive_int, nargs="+", default=None, metavar=("H", "W"),
                   help="train at this size, the images resized bilinearly (default: the "
                        "preset's). With --resume: continue the run at this size, its "
                        "relative-bias tables and their optimizer moments resized and the "
                        "change recorded; a later --resume keeps it (docs/training.md). The "
                        "model's total stride must divide it")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_implementation_argument(t)

    e = sub.add_parser("evaluate", help="accuracy and a confusion-matrix plot for a checkpoint",
                       description="Evaluate a checkpoint on the data it was trained on (by "
                       "default), normalised with the statistics stored in the checkpoint.")
    e.add_argument("--checkpoint", required=True, metavar="PATH", type=_path)
    _add_data_arguments(e)
    e.add_argument("--split", choices=("test", "val", "train"), default="test")
    e.add_argument("--out", default=None, metavar="DIR", type=_path,
                   help="where to write confusion.png (default: the checkpoint's folder)")
    e.add_argument("--image-size", type=_positive_int, nargs="+", default=None, metavar=("H", "W"),
                   help="run the model at this size: its relative-bias tables are resized, the "
                        "images resized bilinearly (docs/timm.md, 'Any resolution')")
    _add_implementation_argument(e)

    for name, help_text in (
        ("bench", "time NumPy against the PyTorch twin (op by op and a training step)"),
        ("study", "run experiments, e.g. `minicoat study layouts` (the paper's section 2.2)"),
        ("assignments", "build course assignments: `minicoat assignments build OUT`"),
        ("convert", "timm .safetensors <-> minicoat .npz: `minicoat convert IN OUT`"),
    ):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


# commands with their own argument parsers
PASSTHROUGH = ("bench", "study", "assignments", "convert")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        # Hand everything after the command name to its own parser (so that its options and
        # --help work); argparse's REMAINDER would stop at a leading option.
        return _passthrough(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    from .ops import implementation
    from .train import Interrupted, NonFiniteLoss

    def fail(message, code=2):
        print(f"minicoat {args.command}: {message}".replace("\n", " "), file=sys.stderr)
        return code

    try:
        with implementation(args.implementation):
            if args.command == "train":
                return _train(args)
            return _evaluate(args)  # bench / study / assignments never reach the parser
    except Interrupted as err:
        return fail(str(err), 130)
    except KeyboardInterrupt:
        when = " before training started" if args.command == "train" else ""
        return fail(f"interrupted{when}; nothing was written", 130)
    except NonFiniteLoss as err:
        return fail(f"error: {err}", 1)
    except OSError as err:
        return fail(f"error: {describe_os_error(err)}")
    except (ValueError, TypeError, OverflowError) as err:
        return fail(f"error: {err}")


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then run again (a stopped run resumes "
                  "with --resume RUN/checkpoint.npz)",
    errno.EDQUOT: "the disk quota is exceeded: free some space, then run again",
    errno.EACCES: "no permission: choose a folder you can write (--out, --data-dir)",
    errno.EPERM: "not permitted: choose a folder you can write (--out, --data-dir)",
    errno.EROFS: "a read-only file system: choose a folder you can write (--out, --data-dir)",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
    errno.EEXIST: "it already exists: choose another path",
}


def describe_os_error(err):
    """One line for an ``OSError``: the file, what happened, and what to do."""
    if err.filename is None:
        return str(err)
    hint = _OS_HINTS.get(err.errno)
    return f"{err.filename}: {err.strerror or type(err).__name__}" + (f"; {hint}" if hint else "")


def _passthrough(command, argv):
    if command == "bench":
        from .bench import main as command_main
    elif command == "study":
        from .study import main as command_main
    elif command == "convert":
        from .interop.convert import main as command_main
    else:
        from .assignments.build import main as command_main
    return command_main(argv)


def _train(args):
    from .checkpoint import load_checkpoint
    from .configs import config as preset
    from .datasets import load_dataset
    from .hyper import TrainConfig
    from .runs import check_folder
    from .train import train

    given = {k: v for k, v in vars(args).items()
             if v is not None and k in MODEL_OPTIONS + HYPER_OPTIONS + DATA_OPTIONS + ("model",)}
    size = _image_size(args.image_size)
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        stored, hp = _run_settings(args.resume, ckpt)
        conflicts = [f"--{k.replace('_', '-')} {v!r} (the run's: {stored[k]!r})"
                     for k, v in given.items() if stored.get(k, v) != v]
        if conflicts:
            raise ValueError(f"{args.resume}: a resumed run keeps its own settings, but "
                             f"{', '.join(conflicts)} differ; drop them, or start a new run "
                             f"with another --out to change them")
        settings = stored
        model_config = _at_size(ckpt.config, size)  # the one setting a resumed run may change
        data_size = size or (ckpt.extra.get("data") or {}).get("image_size")
        data_dir = args.data_dir or (ckpt.extra.get("args") or {}).get("data_dir")
        out = args.out or os.path.dirname(os.path.abspath(args.resume))
    else:
        dataset = given.get("dataset", "digits")
        settings = {"dataset": dataset, "model": DEFAULT_MODEL[dataset],
                    "epochs": DEFAULT_EPOCHS[dataset], **given}
        overrides = {k: settings[k] for k in MODEL_OPTIONS if k in settings}
        model_config = _at_size(preset(settings["model"], **overrides), size)
        hp = TrainConfig(**{k: settings[k] for k in HYPER_OPTIONS if k in settings})
        data_size, data_dir = size, args.data_dir
        out = args.out or os.path.join(
            "runs", f"{dataset}-{settings['model']}-{model_config.layout}-seed{hp.seed}"
            + (f"-{size[0]}x{size[1]}" if size else ""))
    settings["image_size"] = list(model_config.image_size)
    # Fail before loading any data if the folder may not be used (checked again, under the
    # folder's lock, when training starts).
    check_folder(out, (ckpt.extra or {}).get("run_id") if args.resume else None,
                 ckpt.step if args.resume else None)
    data = load_dataset(settings["dataset"], data_dir=data_dir, download=args.download,
                        train_subset=settings.get("train_subset"),
                        test_subset=settings.get("test_subset"), image_size=data_size)
    run_args = {**settings, "data_dir": None if data_dir is None else os.path.abspath(data_dir)}
    result = train(model_config, data, hp, out_dir=out, resume=args.resume,
                   progress=not args.no_progress, run_args=run_args)
    print(f"test_accuracy {result['test_accuracy']:.4f}; wrote {out}/metrics.json, metrics.csv,"
          f" curves.png, checkpoint.npz")
    return 0


def _image_size(values):
    """``--image-size H [W]`` as ``(H, W)``, or None when not given."""
    if values is None:
        return None
    if len(values) > 2:
        raise ValueError(f"--image-size takes H or H W (integers >= 1), got {len(values)} "
                         f"values: {' '.join(map(str, values))}")
    return tuple(values) * (2 // len(values))


def _at_size(config, size):
    """``config`` at image size ``size`` (None: as it is), or a ``ValueError`` naming
    ``--image-size`` and what the model needs."""
    try:
        return config if size is None else config.replace(image_size=size)
    except ValueError as err:
        raise ValueError(f"--image-size {size[0]} {size[1]}: {err}") from None


def _run_settings(path, ckpt):
    """The command-line settings a checkpoint's run was made with (its config, hyper-
    parameters and data definition), as ``{option dest: value}``."""
    extra = ckpt.extra if isinstance(ckpt.extra, dict) else {}
    hyper, data = extra.get("hyper"), extra.get("data") or {}
    if not isinstance(hyper, dict) or not isinstance(data, dict):
        raise ValueError(f"{path} is not a training checkpoint (no run record): it can be "
                         f"evaluated, not resumed")
    settings = {k: hyper.get(k) for k in HYPER_OPTIONS}
    settings.update({k: getattr(ckpt.config, k) for k in MODEL_OPTIONS})
    settings["model"] = ckpt.config.name
    settings["dataset"] = data.get("dataset", extra.get("dataset"))
    settings.update({k: data.get(k) for k in ("train_subset", "test_subset")})
    from .datasets import DATASETS
    from .hyper import TrainConfig

    if settings["dataset"] not in DATASETS:
        raise ValueError(f"{path}: the run record names no known dataset "
                         f"({settings['dataset']!r}); it cannot be resumed")
    try:
        hp = TrainConfig(**hyper)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: the run record's hyper-parameters are not valid ({err}); "
                         f"it cannot be resumed") from None
    return settings, hp


def _evaluate(args):
    from .checkpoint import load_checkpoint
    from .datasets import load_dataset
    from .plots import confusion_matrix, plot_confusion
    from .train import check_compatible, evaluate

    ckpt = load_checkpoint(args.checkpoint)
    extra = ckpt.extra if isinstance(ckpt.extra, dict) else {}
    run = extra.get("data") if isinstance(extra.get("data"), dict) else {}
    dataset = args.dataset or run.get("dataset") or extra.get("dataset") or "digits"
    mean, std = extra.get("mean"), extra.get("std")
    if mean is None or std is None:
        mean = std = None
        print(f"note: {args.checkpoint} stores no normalisation; using the training split's")
    elif not all(isinstance(v, list) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in (mean, std)):
        raise ValueError(f"{args.checkpoint}: the stored normalisation (mean {mean!r:.40}, std "
                         f"{std!r:.40}) is not a list of numbers per channel")
    params, config = ckpt.params, ckpt.config
    size = _image_size(args.image_size)
    if size is not None:
        from .interop.resize import resize_rel_bias

        _at_size(config, size)  # refuses a size the model cannot take, naming the option
        params, config = resize_rel_bias(params, config, size)
    # the images at the model's size (the run's own, or --image-size), resized from their own
    data = load_dataset(dataset, data_dir=args.data_dir, download=args.download,
                        train_subset=args.train_subset or run.get("train_subset"),
                        test_subset=args.test_subset or run.get("test_subset"),
                        mean=mean, std=std, image_size=size or run.get("image_size"))
    check_compatible(config, data)
    x, y = {"test": (data.x_test, data.y_test), "val": (data.x_val, data.y_val),
            "train": (data.x_train, data.y_train)}[args.split]
    loss, accuracy, predictions = evaluate(params, ckpt.state, x, y, config)
    matrix = confusion_matrix(y, predictions, data.num_classes)
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "confusion.png")
    plot_confusion(matrix, data.classes, path,
                   title=f"{data.name} {args.split}: accuracy {accuracy:.4f}")
    print(f"{data.name} {args.split}: accuracy {accuracy:.4f}, loss {loss:.4f} "
          f"({len(y)} images)")
    print("confusion matrix (rows: true, columns: predicted):")
    print(matrix)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
