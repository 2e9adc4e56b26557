"""Figures of the final runs, by group: each `--run` of `search report` is a group (one run, or a `--seeds`
folder of several), drawn side by side and never pooled with another.

The house style, colours and helpers are those of search/hpo/trial_figures.py; a group keeps one colour
(``RUN_COLOURS[i]``) in every figure of the page.
"""
from __future__ import annotations

import math
import statistics
import textwrap
from typing import Sequence

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from search.hpo.trial_figures import RUN_COLOURS, STYLE, WIDTH, draw_confusion, new_figure
from search.results import published

Matrix = Sequence[Sequence[int]]


def group_colour(i: int) -> str:
    return RUN_COLOURS[i % len(RUN_COLOURS)]


def _mean_sd(values: Sequence[float | None]) -> tuple[float, float, list[float]]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    return mean, statistics.stdev(finite) if len(finite) > 1 else 0.0, finite


@rc_context(STYLE)
def confusion_groups_figure(panels: Sequence[tuple[str, Sequence[Matrix]]], names: Sequence[str], title: str,
                            colours: Sequence[str] | None = None) -> Figure:
    """One row-normalised confusion matrix (% of each true class, mean over the group's runs) per group, side by
    side with one colour bar; counts in brackets where a group has a single run. ``colours``: each panel's group
    colour (default: the panels' order), so that a group keeps its colour when another has no matrix."""
    k = len(names)
    long_names = any(len(n) > 3 for n in names)
    row_labels = [f"{n} ({i})" if long_names else n for i, n in enumerate(names)]
    side = min(max(2.6, 0.32 * k), 4.2)  # smaller than a lone matrix: the panels share a page's width
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig = new_figure(columns * (side + 0.3) + 0.07 * max(map(len, row_labels)) + 1.4, rows * (side + 0.9) + 0.5)
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    for i, (label, matrices) in enumerate(panels):
        ax = axes[i // columns][i % columns]
        image = draw_confusion(ax, matrices, names, row_labels=row_labels if i % columns == 0 else None,
                               fontsize=7 if k > 6 else 8, long_names=long_names)
        runs = len(matrices)
        ax.set_title(textwrap.fill(f"{label} ({f'mean of {runs} runs' if runs > 1 else '1 run'})", 34),
                     color=colours[i] if colours else group_colour(i))
    for j in range(len(panels), rows * columns):
        axes[j // columns][j % columns].remove()  # one axes per group, none empty
    fig.colorbar(image, ax=axes.ravel().tolist()[:len(panels)], shrink=0.8, label="% of the true class")
    fig.suptitle(textwrap.fill(title, 90))
    return fig


@rc_context(STYLE)
def per_class_groups_figure(names: list[str], groups: Sequence[tuple[str, list[list[float | None]], float]],
                            counts: list[int], multi_label: bool, colours: Sequence[str] | None = None) -> Figure:
    """Per-class accuracy, one bar per group in each class (its mean over the group's runs; whiskers ± one sd and a
    dot per run where it has several); a dashed line per group at its overall test accuracy.

    groups: (label, per run per class accuracy, overall accuracy); colours: as in `confusion_groups_figure`."""
    k, g = len(names), len(groups)
    colours = list(colours) if colours else [group_colour(i) for i in range(g)]
    height = 0.8 / g
    fig = new_figure(WIDTH, (0.2 + 0.16 * g) * k + 1.8)
    ax = fig.subplots()
    several = False
    for gi, (_, accs, overall) in enumerate(groups):
        colour = colours[gi]
        ys = [i - 0.4 + height * (gi + 0.5) for i in range(k)]
        stats = [_mean_sd([run[i] for run in accs]) for i in range(k)]
        means = [m for m, _, _ in stats]
        # Whiskers are clipped to [0, 1]: an accuracy cannot leave that range, whatever mean ± sd says.
        spread = [[min(sd, m) for m, sd, _ in stats], [min(sd, 1 - m) for m, sd, _ in stats]]
        ax.barh(ys, means, xerr=spread if len(accs) > 1 else None, color=colour, height=height * 0.9,
                error_kw={"ecolor": "black", "capsize": 2, "lw": 0.8})
        if len(accs) > 1:
            several = True
            for y, (_, _, vals) in zip(ys, stats):
                ax.scatter(vals, [y] * len(vals), color="black", s=5, zorder=4)
        for y, m in zip(ys, means):  # the values in a column right of the axis: never on a bar or a whisker
            if not math.isnan(m):
                ax.text(1.03, y, f"{m:.2f}", va="center", fontsize=7 if g > 1 else 8, color=colour)
        ax.axvline(overall, color=colour, linestyle="--", lw=1.1)
    what = "positives" if multi_label else "test images"
    ax.set_yticks(range(k), labels=[f"{n} (n = {c})" for n, c in zip(names, counts)])
    ax.set_ylim(k - 0.5, -0.5)
    handles = [Patch(color=colours[i], label=f"{label} ({len(accs)} run{'s' if len(accs) > 1 else ''}); "
                                                  f"dashed: overall {overall:.3f}")
               for i, (label, accs, overall) in enumerate(groups)]
    if several:
        handles += [Line2D([], [], color="black", marker="o", markersize=3, linestyle="none", label="one run"),
                    Line2D([], [], color="black", lw=1, label="± 1 sd over the group's runs")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if g > 1 else 3)
    ax.set_xlim(0, 1.12)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.spines["bottom"].set_bounds(0, 1)
    ax.set_xlabel("Accuracy on the class's " + ("labels (threshold 0.5)" if multi_label else "test images (recall)"))
    fig.suptitle(f"Per-class test accuracy (n: {what} of the class)")  # centred on the figure, not the axes
    ax.grid(axis="y", visible=False)
    return fig


@rc_context(STYLE)
def groups_metrics_figure(groups: Sequence[tuple[str, list[float], list[float]]],
                        reference: dict[str, tuple[float, float]] | None) -> Figure:
    """Dot plot of test ACC and AUC: a row per group (each run a dot, the mean ± sd a diamond in the group's
    colour), below the published methods when known. groups: (row label, ACC of each run, AUC of each run)."""
    rows = list(reference or {})
    labels = rows + [g[0] for g in groups]
    fig = new_figure(WIDTH + 1.0, 0.42 * len(labels) + 1.9)
    acc_ax, auc_ax = fig.subplots(1, 2, sharey=True)
    for ax, column, index, name in ((acc_ax, 1, 1, "Test accuracy"), (auc_ax, 2, 0, "Test AUC")):
        values: list[float] = []
        if reference:
            ax.scatter([reference[m][index] for m in rows], range(len(rows)), color="0.45", s=30, zorder=3)
            for y, m in enumerate(rows):
                ax.annotate(f"{reference[m][index]:.3f}", (reference[m][index], y), xytext=(0, -6),
                            textcoords="offset points", ha="center", va="top", fontsize=7, color="0.35")
            values += [reference[m][index] for m in rows]
        for gi, group in enumerate(groups):
            y, colour = len(rows) + gi, group_colour(gi)
            mean, sd, finite = _mean_sd(group[column])
            if not finite:
                continue
            # the whisker is clipped to [0, 1], where ACC and AUC live
            ax.errorbar([mean], [y], xerr=[[min(sd, mean)], [min(sd, 1 - mean)]] if len(finite) > 1 else None,
                        fmt="D", color=colour, markersize=7, capsize=4, zorder=4)
            ax.annotate(f"{mean:.3f}", (mean, y), xytext=(0, -9), textcoords="offset points", ha="center",
                        va="top", fontsize=8, color=colour)
            if len(finite) > 1:
                ax.scatter(finite, [y] * len(finite), color="black", s=10, zorder=5)
            values += finite + [mean - sd, mean + sd]  # room for the whiskers too
        if values:
            low, high = min(values), max(values)
            ax.set_xlim(max(0.0, low - 0.06 - (high - low) * 0.1), min(1.0, high) + 0.02)
        ax.set_xlabel(name + " (0 to 1)")
        ax.grid(axis="y", visible=False)
    acc_ax.set_yticks(range(len(labels)), labels=labels)
    acc_ax.set_ylim(len(labels) - 0.2, -0.6)  # top to bottom, with room for the value under the last row
    for i, label in enumerate(acc_ax.get_yticklabels()[len(rows):]):
        label.set_fontweight("bold")
        label.set_color(group_colour(i))
    several = any(len(g[1]) > 1 for g in groups)
    handles = [Line2D([], [], color=group_colour(0) if len(groups) == 1 else "0.2", marker="D", linestyle="none",
                      label="this work: mean" + (" ± sd of a group's runs" if several else ""))]
    if several:
        handles.append(Line2D([], [], color="black", marker="o", markersize=3, linestyle="none", label="one run"))
    if reference:
        handles.append(Line2D([], [], color="0.45", marker="o", linestyle="none", label=published.SOURCE))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2))  # the source is long
    fig.suptitle("Test accuracy and AUC" + (" beside the published MedMNIST v2 results" if reference else ""))
    return fig


@rc_context(STYLE)
def gap_figure(groups: Sequence[tuple[str, list[float], list[float]]]) -> Figure:
    """Validation minus test, of ACC and of AUC: a row per group, each run a dot, the group's mean ± sd a diamond in
    its colour, and a line at 0 (no gap). groups: (row label, ACC gap of each run, AUC gap of each run)."""
    labels = [g[0] for g in groups]
    fig = new_figure(WIDTH + 1.0, 0.42 * len(labels) + 1.9)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, name in ((axes[0], 1, "ACC"), (axes[1], 2, "AUC")):
        ax.axvline(0, color="0.45", lw=1, linestyle="--")
        for gi, group in enumerate(groups):
            mean, sd, finite = _mean_sd(group[column])
            if not finite:
                continue
            colour = group_colour(gi)
            ax.errorbar([mean], [gi], xerr=[[sd], [sd]] if len(finite) > 1 else None, fmt="D", color=colour,
                        markersize=7, capsize=4, zorder=4)
            ax.annotate(f"{mean:+.3f}", (mean, gi), xytext=(0, -9), textcoords="offset points", ha="center",
                        va="top", fontsize=8, color=colour)
            if len(finite) > 1:
                ax.scatter(finite, [gi] * len(finite), color="black", s=10, zorder=5)
        ax.set_xlabel(f"Validation {name} − test {name}")
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(range(len(labels)), labels=labels)
    axes[0].set_ylim(len(labels) - 0.2, -0.6)
    for i, label in enumerate(axes[0].get_yticklabels()):
        label.set_fontweight("bold")
        label.set_color(group_colour(i))
    fig.suptitle("Validation-test gap of the kept epoch (> 0: the validation split flatters the run)")
    return fig
