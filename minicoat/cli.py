"""The ``minicoat`` command: train, evaluate, bench, study, assignments.

``minicoat train`` with no arguments trains the ``coatnet-digits`` preset on the 8x8 UCI
digits that ship inside the package, so it needs no network and no data files.
"""

import argparse
import dataclasses
import json
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


def _add_data_arguments(p):
    from .datasets import DATASETS

    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="dataset (default: digits, carried inside the package)")
    p.add_argument("--data-dir", default=None,
                   help="folder with MNIST IDX / CIFAR-10 binary files (default: "
                        "$MINICOAT_DATA_DIR or ~/.cache/minicoat)")
    p.add_argument("--download", action="store_true",
                   help="download missing MNIST / Fashion-MNIST / CIFAR-10 files (SHA-256 checked)")
    p.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on the first N images of the (fixed, shuffled) train split")
    p.add_argument("--test-subset", type=int, default=None, metavar="N",
                   help="evaluate on the first N images of the test split")


def _add_implementation_argument(p):
    p.add_argument("--implementation", choices=("traced", "readable", "fast"), default="fast",
                   help="which implementation of the ops runs: traced (autograd differentiates "
                        "the plain forward), readable (the hand-written VJPs of minicoat/ops) or "
                        "fast (the kernels; default). All three give the same numbers.")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minicoat",
        description="An educational pure-NumPy CoAtNet (Dai et al. 2021) with autograd gradients.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a CoAtNet and write metrics, curves and a checkpoint",
                       description="Train a CoAtNet. Writes OUT/metrics.json (test_accuracy, "
                       "train_loss, timings), OUT/metrics.csv per epoch, OUT/curves.png and "
                       "OUT/checkpoint.npz (rewritten atomically after every epoch).")
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
    t.add_argument("--epochs", type=int, default=None,
                   help="epochs (default per dataset: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0: off)")
    t.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default: runs/<dataset>-<model>-<layout>-seed<seed>)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint.npz (same settings)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_implementation_argument(t)

    e = sub.add_parser("evaluate", help="accuracy and a confusion-matrix plot for a checkpoint")
    e.add_argument("--checkpoint", required=True, metavar="PATH")
    _add_data_arguments(e)
    e.add_argument("--split", choices=("test", "val", "train"), default="test")
    e.add_argument("--out", default=None, metavar="DIR",
                   help="where to write confusion.png (default: the checkpoint's folder)")
    _add_implementation_argument(e)

    for name, help_text in (
        ("bench", "time NumPy against the PyTorch twin (op by op and a training step)"),
        ("study", "run experiments, e.g. `minicoat study layouts` (the paper's section 2.2)"),
        ("assignments", "build course assignments: `minicoat assignments build OUT`"),
    ):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


PASSTHROUGH = ("bench", "study", "assignments")  # commands with their own argument parsers


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        # Hand everything after the command name to its own parser (so that its options and
        # --help work); argparse's REMAINDER would stop at a leading option.
        return _passthrough(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from .ops import implementation

    try:
        with implementation(args.implementation):
            if args.command == "train":
                return _train(args)
            return _evaluate(args)  # bench / study / assignments never reach the parser
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"minicoat {args.command}: error: {err}", file=sys.stderr)
        return 2


def _passthrough(command, argv):
    if command == "bench":
        from .bench import main as command_main
    elif command == "study":
        from .study import main as command_main
    else:
        from .assignments.build import main as command_main
    return command_main(argv)


def _load_data(args):
    from .datasets import load_dataset

    return load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                        train_subset=args.train_subset, test_subset=args.test_subset)


def _train(args):
    from .configs import config as preset
    from .train import NonFiniteLoss, TrainConfig, train

    model_name = args.model or DEFAULT_MODEL[args.dataset]
    overrides = {k: getattr(args, k) for k in ("layout", "variant", "pool", "gelu")
                 if getattr(args, k) is not None}
    model_config = preset(model_name, **overrides)
    hp = TrainConfig(
        epochs=args.epochs or DEFAULT_EPOCHS[args.dataset], batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        grad_clip=args.grad_clip, augment=not args.no_augment, seed=args.seed,
    )
    out = args.out or os.path.join(
        "runs", f"{args.dataset}-{model_name}-{model_config.layout}-seed{args.seed}")
    if args.resume is None and os.path.exists(os.path.join(out, "checkpoint.npz")):
        raise ValueError(f"{out} already holds a run; pass --resume {out}/checkpoint.npz to "
                         f"continue it, or choose another --out")
    os.makedirs(out, exist_ok=True)
    data = _load_data(args)
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump({**vars(args), "hyper": dataclasses.asdict(hp)}, f, indent=2)
    try:
        result = train(model_config, data, hp, out_dir=out, resume=args.resume,
                       progress=not args.no_progress)
    except NonFiniteLoss as err:
        print(f"minicoat train: {err}", file=sys.stderr)
        return 1
    print(f"test_accuracy {result['test_accuracy']:.4f}; wrote {out}/metrics.json, metrics.csv,"
          f" curves.png, checkpoint.npz")
    return 0


def _evaluate(args):
    from .checkpoint import load_checkpoint
    from .plots import confusion_matrix, plot_confusion
    from .train import check_compatible, evaluate

    ckpt = load_checkpoint(args.checkpoint)
    data = _load_data(args)
    check_compatible(ckpt.config, data)
    x, y = {"test": (data.x_test, data.y_test), "val": (data.x_val, data.y_val),
            "train": (data.x_train, data.y_train)}[args.split]
    loss, accuracy, predictions = evaluate(ckpt.params, ckpt.state, x, y, ckpt.config)
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
