"""Figures a run leaves behind: learning curves and a confusion matrix (matplotlib, no screen)."""

import numpy as onp

from .files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history, path):
    """Loss and accuracy per epoch (train and validation) side by side, saved to ``path``."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train")
    ax_loss.plot(epochs, [row["val_loss"] for row in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [row["train_accuracy"] for row in history], label="train")
    ax_acc.plot(epochs, [row["val_accuracy"] for row in history], label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:  # a kill mid-save leaves the old figure, not half a PNG
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def confusion_matrix(labels, predictions, num_classes):
    """``(K, K)`` counts: row = true class, column = predicted class."""
    matrix = onp.zeros((num_classes, num_classes), dtype=onp.int64)
    onp.add.at(matrix, (onp.asarray(labels), onp.asarray(predictions)), 1)
    return matrix


def plot_confusion(matrix, classes, path, title="confusion matrix"):
    """Heat map of a confusion matrix with the counts written in, saved to ``path``."""
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.55 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:  # a kill mid-save leaves the old figure, not half a PNG
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
