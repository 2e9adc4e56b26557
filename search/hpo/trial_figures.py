"""The figures a worker draws for its own trial (learning curve, confusion matrix), and the house style that every
figure of the project shares (search/results/figures.py draws a study's and its runs' figures in it).

On the hpo floor because a worker writes its trial's files itself (search/hpo/artifacts.py) and hpo never imports
the results floor. Drawn with matplotlib's object API (Figure objects, no pyplot state): no GUI backend is ever
chosen, so a worker process can draw and nothing opens a window. Import it lazily, where a figure is drawn: only
the processes that draw load matplotlib. The style: colour-blind safe colours (Okabe & Ito), units on every axis,
applied with ``matplotlib.rc_context`` around each drawing function (rcParams apply when artists are created).
"""
from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Sequence

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from search.hpo.goals import LABELS

# Okabe & Ito's colour-blind safe palette.
BLUE, ORANGE, VERMILLION, GREEN, SKY, PURPLE, YELLOW = ("#0072B2", "#E69F00", "#D55E00", "#009E73", "#56B4E9",
                                                         "#CC79A7", "#F0E442")
RUN_COLOURS = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, "#000000")
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.axisbelow": True,
    "savefig.dpi": 200, "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs: selectable, journal-safe
    "figure.constrained_layout.use": True,
}
WIDTH = 6.4  # inches: fills a text column of an A4 page at 1:1


def metric_label(metric: str) -> str:
    return {**LABELS, "test_acc": "test accuracy", "test_auc": "test AUC"}.get(metric, metric)


def new_figure(width: float = WIDTH, height: float = 3.6, **kw: Any) -> Figure:
    return Figure(figsize=(width, height), **kw)


def save_png(fig: Figure, path: Path, dpi: int = STYLE["savefig.dpi"]) -> None:
    with rc_context(STYLE):
        fig.savefig(path, dpi=dpi)


@rc_context(STYLE)
def history_figure(runs: Sequence[tuple[str, list[dict[str, float]]]], title: str,
                   kept: dict[str, int] | None = None, max_epoch: int | None = None,
                   groups: Sequence[str] | None = None) -> Figure:
    """Loss (left) and validation ACC and AUC (right) per epoch, for one run or several (one colour each).

    ``kept``: run label -> the epoch whose weights were kept (a star); ``max_epoch``: the epoch budget, so that
    a pruned trial's axis shows how far it could have gone; ``groups``: each run's group, where runs come in
    groups (the `--run` folders of a report): then the colour tells the group, and the legend names the groups.
    """
    fig = new_figure(WIDTH + 1.2, 3.6)
    loss_ax, metric_ax = fig.subplots(1, 2)
    single = len(runs) == 1
    named = list(dict.fromkeys(groups)) if groups is not None and len(set(groups)) > 1 else None
    for i, (label, history) in enumerate(runs):
        epochs = [h["epoch"] for h in history]
        marker = {"marker": "o", "markersize": 3} if len(epochs) <= 15 else {}
        if single:  # colours tell the curves apart
            curves = [(loss_ax, "train_loss", BLUE, "-"), (loss_ax, "val_loss", VERMILLION, "-"),
                      (metric_ax, "val_acc", BLUE, "-"), (metric_ax, "val_auc", VERMILLION, "-")]
        else:  # colours tell the runs apart, line styles the curves
            colour = RUN_COLOURS[(named.index(groups[i]) if named else i) % len(RUN_COLOURS)]  # type: ignore[index]
            curves = [(loss_ax, "train_loss", colour, "-"), (loss_ax, "val_loss", colour, "--"),
                      (metric_ax, "val_acc", colour, "-"), (metric_ax, "val_auc", colour, ":")]
        for ax, key, colour, style in curves:
            ax.plot(epochs, [h.get(key, math.nan) for h in history], color=colour, linestyle=style, lw=1.6, **marker)
        if kept and kept.get(label):
            h = history[kept[label] - 1]
            metric_ax.plot([h["epoch"]], [h["val_acc"]], marker="*", markersize=12, color="black", zorder=5,
                           linestyle="none")
    names = {"train_loss": "training loss", "val_loss": "validation loss", "val_acc": "validation accuracy",
             "val_auc": "validation AUC"}
    if single:
        handles = [Line2D([], [], color=c, label=names[k]) for k, c in
                   (("train_loss", BLUE), ("val_loss", VERMILLION), ("val_acc", BLUE), ("val_auc", VERMILLION))]
    else:
        handles = [Line2D([], [], color="0.2", linestyle=st, label=names[k]) for k, st in
                   (("train_loss", "-"), ("val_loss", "--"), ("val_acc", "-"), ("val_auc", ":"))]
    if kept and any(kept.values()):
        handles.append(Line2D([], [], marker="*", markersize=10, color="black", linestyle="none",
                              label="kept epoch (best validation)"))
    if not single:  # which colour is which run: upper right of the loss panel, where falling losses leave room
        legend = named or [label for label, _ in runs]
        loss_ax.legend(handles=[Line2D([], [], color=RUN_COLOURS[i % len(RUN_COLOURS)], lw=3, label=label)
                                for i, label in enumerate(legend)], loc="upper right")
    # Below the axes: a legend inside would cover the curves, which end where they are best.
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    loss_ax.set(ylabel="Cross-entropy loss", title="Loss")
    metric_ax.set(ylabel="Accuracy / AUC (0 to 1)", title="Validation metrics")
    last = max([h["epoch"] for _, hist in runs for h in hist] + [max_epoch or 1])
    for ax in (loss_ax, metric_ax):
        epoch_axis(ax, last)
    fig.suptitle(textwrap.fill(title, 85))
    return fig


def epoch_axis(ax: Any, last: int) -> None:
    """Whole epochs only, from 1 to ``last`` (matplotlib would label a one-epoch run 0.95, 0.975, ...)."""
    ax.set_xlabel("Epoch")
    ax.set_xlim(0.7, max(last, 1) + 0.3)
    if last <= 12:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@rc_context(STYLE)
def confusion_figure(matrices: Sequence[Sequence[Sequence[int]]], names: Sequence[str], title: str) -> Figure:
    """Row-normalised confusion matrix in % (mean over the given runs); counts too when there is one run."""
    k = len(names)
    long_names = any(len(n) > 3 for n in names)
    row_labels = [f"{n} ({i})" if long_names else n for i, n in enumerate(names)]
    # Sized from its parts, so that neither a long class name nor the axis title is cut off and no empty band
    # is left: the square matrix, the row names (about 0.07 in per character at 9 pt), the colour bar.
    side = min(max(3.2, 0.45 * k), 7.0)
    fig = new_figure(side + 0.07 * max(map(len, row_labels)) + 1.9, side + 1.2)
    ax = fig.subplots()
    image = draw_confusion(ax, matrices, names, row_labels=row_labels, fontsize=8 if k <= 10 else 7,
                           long_names=long_names)
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the true class")
    # A figure title, not an axes title: constrained layout keeps it clear of the colour bar.
    fig.suptitle(textwrap.fill(title, 70))
    return fig


def draw_confusion(ax: Any, matrices: Sequence[Sequence[Sequence[int]]], names: Sequence[str], *,
                   row_labels: Sequence[str] | None, fontsize: int, long_names: bool) -> Any:
    """One confusion matrix on ``ax``: each cell the % of its row (true class), the mean over ``matrices``, with
    the counts in brackets when there is one matrix; ``row_labels`` None leaves the rows unnamed (a panel right of
    another). Returns the image, for a colour bar."""
    k = len(names)
    shares = [[[100 * c / sum(row) if sum(row) else math.nan for c in row] for row in m] for m in matrices]
    pct = [[statistics.fmean(s[i][j] for s in shares) for j in range(k)] for i in range(k)]
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(k):
        for j in range(k):
            if math.isnan(pct[i][j]) or pct[i][j] == 0:  # empty cells stay blank: the errors stand out
                continue
            text = f"{pct[i][j]:.0f}" if pct[i][j] >= 0.5 else "<1"
            if len(matrices) == 1:
                text += f"\n({matrices[0][i][j]})"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if pct[i][j] > 55 else "black")
    ax.set_xticks(range(k), labels=[str(i) for i in range(k)] if long_names else list(names))
    ax.set_yticks(range(k), labels=list(row_labels) if row_labels is not None else [])
    ax.set_xlabel("Predicted class" + (" (number as on the left)" if long_names else ""))
    if row_labels is not None:
        ax.set_ylabel("True class")
    ax.grid(False)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image
