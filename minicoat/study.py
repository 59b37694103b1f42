"""Experiments: ``minicoat study layouts``, the paper's layout study at small scale.

Paper, section 2.2 and figure 1: with the same stem and comparable size, train the layouts
C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T and ViT_REL on the same data and compare

* *generalization*: test accuracy at a given final training loss (a model that reaches the
  same training loss but scores higher on unseen data generalises better);
* *capacity*: how low the training loss goes (the paper measures it on the large JFT set).

The paper finds generalization C-C-C-C ~ C-C-C-T >= C-C-T-T > C-T-T-T >> ViT_REL and capacity
C-C-T-T ~ C-T-T-T > ViT_REL > C-C-C-T > C-C-C-C. Here everything is tiny (thousands of small
images, minutes of CPU), so read the result as a demonstration of the method, not a
replication.
"""

import argparse
import json
import os
import sys

from .configs import LAYOUTS
from .configs import config as preset
from .datasets import load_dataset
from .model import count_params
from .train import TrainConfig, evaluate, train

PAPER_GENERALIZATION = "C-C-C-C ~ C-C-C-T >= C-C-T-T > C-T-T-T >> VIT_REL"
PAPER_CAPACITY = "C-C-T-T ~ C-T-T-T > VIT_REL > C-C-C-T > C-C-C-C"
MODEL_FOR = {"digits": "coatnet-digits", "shapes": "coatnet-shapes"}


def run_layout_study(dataset="digits", epochs=15, seeds=(0,), train_subset=None,
                     test_subset=None, progress=False, log=print):
    """Train every layout on ``dataset``; returns one row per layout (means over ``seeds``).

    Each row: layout, parameters, final train loss (training mode, with label smoothing and
    augmentation as in training), clean train loss (evaluation mode, no smoothing), test
    accuracy, seconds.
    """
    data = load_dataset(dataset, train_subset=train_subset, test_subset=test_subset)
    rows = []
    for layout in LAYOUTS:
        model = preset(MODEL_FOR[dataset], layout=layout)
        runs = []
        for seed in seeds:
            hp = TrainConfig(epochs=epochs, seed=seed)
            result = train(model, data, hp, progress=progress, log=lambda *a: None)
            clean_loss, clean_acc, _ = evaluate(result["params"], result["state"], data.x_train,
                                                data.y_train, model)
            runs.append((result["train_loss"], clean_loss, clean_acc, result["test_accuracy"],
                         result["train_seconds"]))
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(5)]
        row = dict(layout=layout, parameters=count_params(model), train_loss=mean[0],
                   clean_train_loss=mean[1], train_accuracy=mean[2], test_accuracy=mean[3],
                   seconds=mean[4], seeds=list(seeds),
                   test_accuracy_per_seed=[r[3] for r in runs],
                   clean_train_loss_per_seed=[r[1] for r in runs],
                   test_errors_per_seed=[round((1 - r[3]) * len(data.y_test)) for r in runs])
        rows.append(row)
        log(f"{layout:8s} {row['parameters']:>9,} params  train loss {row['train_loss']:.4f} "
            f"(clean {row['clean_train_loss']:.4f})  test acc {row['test_accuracy']:.4f}  "
            f"{row['seconds']:.0f}s")
    return rows


def _order(rows, key, reverse):
    ranked = sorted(rows, key=lambda r: r[key], reverse=reverse)
    return " > ".join(r["layout"] for r in ranked)


def markdown_table(rows, dataset, epochs, rank=True):
    """The study's rows as a Markdown table; with ``rank`` (default) the orderings by test
    accuracy and by clean train loss follow, next to the paper's. ``rank=False`` leaves them
    out, for runs too short for an ordering to mean anything."""
    lines = [
        f"Layout study on `{dataset}`, {epochs} epochs, seeds {rows[0]['seeds']}.",
        "",
        "| layout | parameters | final train loss | clean train loss | test accuracy "
        "| test errors per seed | time per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = ", ".join(str(e) for e in r.get("test_errors_per_seed", []))
        lines.append(f"| {r['layout']} | {r['parameters']:,} | {r['train_loss']:.4f} | "
                     f"{r['clean_train_loss']:.4f} | {r['test_accuracy']:.4f} | {errors} | "
                     f"{r['seconds']:.0f} s |")
    if not rank:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"- generalization (test accuracy, high to low): {_order(rows, 'test_accuracy', True)}",
        f"- capacity (clean train loss, low to high): "
        f"{_order(rows, 'clean_train_loss', False)}",
        f"- paper, generalization: {PAPER_GENERALIZATION}",
        f"- paper, capacity: {PAPER_CAPACITY}",
    ]
    return "\n".join(lines) + "\n"


def plot_study(rows, path, title):
    """Final training loss against test accuracy, one colour per layout (the paper's fig. 1).

    Left: every layout. Right: the same without ViT_REL, zoomed in, with each seed's run as a
    small dot and the mean as a large one, so that the spread between seeds is visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, shown in ((axes[0], rows), (axes[1], [r for r in rows if r["layout"] != "VIT_REL"])):
        for r in shown:
            colour = colours[rows.index(r) % len(colours)]
            ax.scatter(r.get("clean_train_loss_per_seed", []), r.get("test_accuracy_per_seed", []),
                       s=15, color=colour, alpha=0.5)
            ax.scatter(r["clean_train_loss"], r["test_accuracy"], s=70, color=colour,
                       label=r["layout"])
        ax.set(xlabel="final training loss (evaluation mode)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title(title)
    axes[1].set_title("zoom: the convolution-first layouts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="minicoat study",
        description="Experiments. `layouts`: train C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T and "
        "VIT_REL on the same data and compare generalization and capacity (paper, sec. 2.2).",
    )
    parser.add_argument("experiment", choices=("layouts",))
    parser.add_argument("--dataset", choices=sorted(MODEL_FOR), default="digits")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 epoch on 128 training and 128 test images")
    parser.add_argument("--out", default="runs/layout-study", metavar="DIR")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    subsets = dict(train_subset=128, test_subset=128) if args.quick else {}
    epochs = 1 if args.quick else args.epochs
    rows = run_layout_study(args.dataset, epochs, tuple(args.seeds), progress=args.progress,
                            **subsets)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "layout_study.json"), "w") as f:
        json.dump(dict(dataset=args.dataset, epochs=epochs, rows=rows), f, indent=2)
    table = markdown_table(rows, args.dataset, epochs)
    with open(os.path.join(args.out, "layout_study.md"), "w") as f:
        f.write(table)
    plot_study(rows, os.path.join(args.out, "layout_study.png"),
               f"layouts on {args.dataset}, {epochs} epochs")
    print(table)
    print(f"wrote {args.out}/layout_study.json, layout_study.md, layout_study.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
