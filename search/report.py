"""`search report`: every figure and table of a study (and of its final runs) for a report, in one folder.

    OUT/index.html            all figures and tables on one page; opens offline (no script, style or font fetched)
    OUT/figures/NAME.png|pdf  each figure, PNG at 200 dpi and PDF (TrueType fonts embedded, as journals ask)
    OUT/tables/NAME.md|tex    each table as Markdown (pandoc caption line) and LaTeX (booktabs)
    OUT/trials.csv            every trial, as `search status --csv` writes it

Figures are drawn with matplotlib's object API (no pyplot state, Agg canvases) in one house style: colour-blind
safe colours (Okabe & Ito), units on every axis, trial states in the same colours throughout. Optuna computes
the hyperparameter importances (fANOVA); its own matplotlib plots are not used, because they switch the global
style to ggplot, label every axis "Objective Value" and do not mark pruned trials. A figure that the data cannot
support (too few trials, no confusion matrix in an old run) is left out with a note on the page saying why.
"""
from __future__ import annotations

import html
import json
import math
import re
import statistics
import textwrap
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed, and never a GUI window from a worker process
from matplotlib import colormaps, rc_context  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator  # noqa: E402

import optuna  # noqa: E402
from optuna.distributions import CategoricalDistribution  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from search import benchmarks  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.export import trial_rows, write_csv  # noqa: E402

# Okabe & Ito's colour-blind safe palette.
BLUE, ORANGE, VERMILLION, GREEN, SKY, PURPLE, YELLOW = ("#0072B2", "#E69F00", "#D55E00", "#009E73", "#56B4E9",
                                                         "#CC79A7", "#F0E442")
RUN_COLOURS = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, "#000000")
STATE_COLOURS = {"complete": BLUE, "pruned": ORANGE, "fail": VERMILLION, "running": SKY, "waiting": "#999999"}
STATES = ("complete", "pruned", "fail", "running", "waiting")
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.axisbelow": True,
    "savefig.dpi": 200, "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs: selectable, journal-safe
    "figure.constrained_layout.use": True,
}
WIDTH = 6.4  # inches: fills a text column of an A4 page at 1:1


def metric_label(metric: str) -> str:
    return {"val_acc": "validation accuracy", "val_auc": "validation AUC", "test_acc": "test accuracy",
            "test_auc": "test AUC"}.get(metric, metric)


def class_names(dataset: str, k: int) -> list[str]:
    """MedMNIST's label names for the dataset's k classes; the class numbers for digits, MNIST or unknown names."""
    try:
        from medmnist import INFO

        labels = INFO.get(dataset, {}).get("label", {})
    except ImportError:
        labels = {}
    names = [labels.get(str(i)) for i in range(k)]
    return [str(n) for n in names] if all(names) else [str(i) for i in range(k)]


# --- figures ------------------------------------------------------------------------------------------------


def _figure(width: float = WIDTH, height: float = 3.6, **kw: Any) -> Figure:
    return Figure(figsize=(width, height), **kw)


def save_png(fig: Figure, path: Path, dpi: int = STYLE["savefig.dpi"]) -> None:
    with rc_context(STYLE):
        fig.savefig(path, dpi=dpi)


def _styled(draw):  # type: ignore[no-untyped-def]
    """Run a drawing function under the house style (rcParams apply when artists are created)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rc_context(STYLE):
            return draw(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = draw.__name__, draw.__doc__
    return wrapper


def _fmt(v: Any, digits: int = 3) -> str:
    """Short, exact enough for a label: 3 significant digits, exponents without padding (1e-5, not 1e-05)."""
    if v is None:
        return ""
    if isinstance(v, float) and not isinstance(v, bool):
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), f"{v:.{digits}g}")
    return str(v)


@_styled
def history_figure(runs: Sequence[tuple[str, list[dict[str, float]]]], title: str,
                   kept: dict[str, int] | None = None, max_epoch: int | None = None) -> Figure:
    """Loss (left) and validation ACC and AUC (right) per epoch, for one run or several (one colour each).

    ``kept``: run label -> the epoch whose weights were kept (a star); ``max_epoch``: the epoch budget, so that
    a pruned trial's axis shows how far it could have gone.
    """
    fig = _figure(WIDTH + 1.2, 3.6)
    loss_ax, metric_ax = fig.subplots(1, 2)
    single = len(runs) == 1
    for i, (label, history) in enumerate(runs):
        epochs = [h["epoch"] for h in history]
        marker = {"marker": "o", "markersize": 3} if len(epochs) <= 15 else {}
        if single:  # colours tell the curves apart
            curves = [(loss_ax, "train_loss", BLUE, "-"), (loss_ax, "val_loss", VERMILLION, "-"),
                      (metric_ax, "val_acc", BLUE, "-"), (metric_ax, "val_auc", VERMILLION, "-")]
        else:  # colours tell the runs apart, line styles the curves
            colour = RUN_COLOURS[i % len(RUN_COLOURS)]
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
        loss_ax.legend(handles=[Line2D([], [], color=RUN_COLOURS[i % len(RUN_COLOURS)], lw=3, label=label)
                                for i, (label, _) in enumerate(runs)], loc="upper right")
    # Below the axes: a legend inside would cover the curves, which end where they are best.
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    loss_ax.set(ylabel="Cross-entropy loss", title="Loss")
    metric_ax.set(ylabel="Accuracy / AUC (0 to 1)", title="Validation metrics")
    last = max([h["epoch"] for _, hist in runs for h in hist] + [max_epoch or 1])
    for ax in (loss_ax, metric_ax):
        _epoch_axis(ax, last)
    fig.suptitle(title)
    return fig


def _epoch_axis(ax: Any, last: int) -> None:
    """Whole epochs only, from 1 to ``last`` (matplotlib would label a one-epoch run 0.95, 0.975, ...)."""
    ax.set_xlabel("Epoch")
    ax.set_xlim(0.7, max(last, 1) + 0.3)
    if last <= 12:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@_styled
def confusion_figure(matrices: Sequence[Sequence[Sequence[int]]], names: Sequence[str], title: str) -> Figure:
    """Row-normalised confusion matrix in % (mean over the given runs); counts too when there is one run."""
    k = len(names)
    shares = []
    for m in matrices:
        rows = [[100 * c / sum(row) if sum(row) else math.nan for c in row] for row in m]
        shares.append(rows)
    pct = [[statistics.fmean(s[i][j] for s in shares) for j in range(k)] for i in range(k)]
    long_names = any(len(n) > 3 for n in names)
    row_labels = [f"{n} ({i})" if long_names else n for i, n in enumerate(names)]
    # Sized from its parts, so that neither a long class name nor the axis title is cut off and no empty band
    # is left: the square matrix, the row names (about 0.07 in per character at 9 pt), the colour bar.
    side = min(max(3.2, 0.45 * k), 7.0)
    fig = _figure(side + 0.07 * max(map(len, row_labels)) + 1.9, side + 1.2)
    ax = fig.subplots()
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    fontsize = 8 if k <= 10 else 7
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
    ax.set_yticks(range(k), labels=row_labels)
    ax.set_xlabel("Predicted class" + (" (number as on the left)" if long_names else ""))
    ax.set_ylabel("True class")
    ax.grid(False)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the true class")
    # A figure title, not an axes title: constrained layout keeps it clear of the colour bar.
    fig.suptitle(textwrap.fill(title, 70))
    return fig


@_styled
def optimisation_history_figure(trials: list[FrozenTrial], metric: str, maximize: bool) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color=ORANGE, s=28, label="pruned (last reported value)", zorder=3)
    ax.scatter([t.number for t in done], [t.value for t in done], color=BLUE, s=22, label="complete", zorder=4)
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        if best is None or (t.value > best if maximize else t.value < best):
            best = t.value
        xs.append(t.number)
        ys.append(best)
    if xs:
        last = max(t.number for t in trials)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="black", lw=1.5, label="best so far", zorder=5)
    ax.set(xlabel="Trial number", ylabel=metric_label(metric).capitalize(),
           title=f"Optimisation history: best {metric_label(metric)} so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right" if maximize else "upper right")
    return fig


@_styled
def importance_figure(importances: dict[str, float], n_trials: int) -> Figure:
    names = list(importances)[::-1]  # most important on top
    values = [importances[n] for n in names]
    fig = _figure(WIDTH, 0.4 * len(names) + 1.4)
    ax = fig.subplots()
    ax.barh(names, values, color=BLUE, height=0.6)
    for y, v in enumerate(values):
        ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(values + [0.0]) * 1.15 + 0.02)
    ax.set(xlabel="Importance (fANOVA: share of the variance of the objective)",
           title=f"Hyperparameter importances ({n_trials} complete trials)")
    ax.grid(axis="y", visible=False)
    return fig


@dataclass
class _ParallelAxis:
    name: str
    position: Any  # value -> 0..1
    ticks: list[tuple[float, str]]


def _parallel_axis(name: str, dist: optuna.distributions.BaseDistribution) -> _ParallelAxis:
    if isinstance(dist, CategoricalDistribution):
        n = len(dist.choices)
        where = {c: (i / (n - 1) if n > 1 else 0.5) for i, c in enumerate(dist.choices)}
        return _ParallelAxis(name, lambda v: where.get(v, math.nan), [(p, _fmt(c)) for c, p in where.items()])
    low, high, log = float(dist.low), float(dist.high), bool(getattr(dist, "log", False))
    f = math.log10 if log else (lambda x: x)
    span = (f(high) - f(low)) or 1.0
    # Round values (decades on a log axis) rather than five arbitrary fractions of the range.
    locator = LogLocator(base=10, subs=(1.0,)) if log else MaxNLocator(nbins=4, integer=isinstance(
        dist, optuna.distributions.IntDistribution))
    values = [v for v in locator.tick_values(low, high) if low * (1 - 1e-9) <= v <= high * (1 + 1e-9) + 1e-12]
    if log and len(values) < 2:
        values = [v for v in LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(low, high)
                  if low * (1 - 1e-9) <= v <= high * (1 + 1e-9)]
    values = values if len(values) >= 2 else [low, high]
    position = lambda v: (f(float(v)) - f(low)) / span  # noqa: E731
    return _ParallelAxis(name, position, [(position(v), _fmt(v, 2)) for v in values])


@_styled
def parallel_figure(trials: list[FrozenTrial], metric: str, maximize: bool) -> Figure | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    names: list[str] = []
    for t in done:
        names += [n for n in t.params if n not in names]
    if not done or not names:
        return None
    axes = [_parallel_axis(n, next(t.distributions[n] for t in done if n in t.distributions)) for n in names]
    values = [t.value for t in done]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.005, hi + 0.005
    axes.append(_ParallelAxis(metric_label(metric), lambda v: (v - lo) / (hi - lo),
                              [(i / 4, f"{lo + (hi - lo) * i / 4:.3f}") for i in range(5)]))
    missing = -0.12
    fig = _figure(max(WIDTH, 1.05 * len(axes) + 1.8), 4.2)
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    norm = Normalize(lo, hi)
    # Worst first, so that the best trials are drawn on top.
    for t in sorted(done, key=lambda t: t.value if maximize else -t.value):
        ys = [a.position(t.params[a.name]) if a.name in t.params else missing for a in axes[:-1]]
        ys.append(axes[-1].position(t.value))
        ax.plot(range(len(axes)), ys, color=cmap(norm(t.value)), lw=1.6, alpha=0.85)
    unset = {a.name for t in done for a in axes[:-1] if a.name not in t.params}
    for i, a in enumerate(axes):
        ax.axvline(i, color="0.35", lw=0.8, zorder=1)
        ticks = a.ticks + ([(missing, "not set")] if a.name in unset else [])
        for pos, label in ticks:
            # An opaque box: the lines pass behind the labels instead of through them.
            ax.text(i - 0.05, pos, label, ha="right", va="center", fontsize=8, zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})
    any_missing = bool(unset)
    ax.set_xticks(range(len(axes)), labels=[a.name for a in axes])
    ax.set_xlim(-0.75, len(axes) - 0.8)
    ax.set_ylim(missing - 0.06 if any_missing else -0.06, 1.06)
    ax.set_yticks([])
    ax.grid(False)
    for spine in ("left", "bottom"):
        ax.spines[spine].set_visible(False)
    ax.tick_params(axis="x", length=0)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric_label(metric).capitalize(), shrink=0.9)
    ax.set_title(f"Parallel coordinates of the {len(done)} complete trials (colour: {metric_label(metric)})")
    return fig


@_styled
def learning_curves_figure(trials: list[FrozenTrial], metric: str, best: FrozenTrial | None) -> Figure | None:
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return None
    fig = _figure()
    ax = fig.subplots()
    counts: Counter[str] = Counter()
    for t in curves:
        state = t.state.name.lower()
        counts[state] += 1
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[s] for s in steps]
        colour = STATE_COLOURS.get(state, "#999999")
        style = ":" if state == "fail" else "-"
        ax.plot(steps, ys, color=colour, lw=1.1, alpha=0.55 if state == "complete" else 0.8, linestyle=style)
        if state == "pruned":
            ax.plot(steps[-1], ys[-1], marker="x", color=colour, markersize=7, mew=1.8)
    if best is not None:
        steps = sorted(best.intermediate_values)
        ax.plot(steps, [best.intermediate_values[s] for s in steps], color="black", lw=2.2, zorder=5)
    handles = []
    if counts["complete"]:
        handles.append(Line2D([], [], color=BLUE, label=f"complete ({counts['complete']})"))
    if counts["pruned"]:
        handles.append(Line2D([], [], color=ORANGE, marker="x", mew=1.8,
                              label=f"pruned ({counts['pruned']}); x: where it was stopped"))
    for state in ("fail", "running"):
        if counts[state]:
            handles.append(Line2D([], [], color=STATE_COLOURS[state], linestyle=":" if state == "fail" else "-",
                                  label=f"{state if state != 'fail' else 'failed'} ({counts[state]})"))
    if best is not None:
        handles.append(Line2D([], [], color="black", lw=2.2, label=f"best: trial {best.number}"))
    ax.legend(handles=handles, loc="best")
    _epoch_axis(ax, max(s for t in curves for s in t.intermediate_values))
    ax.set(ylabel=metric_label(metric).capitalize(), title=f"Learning curves of all {len(curves)} trials")
    return fig


@_styled
def architecture_figure(per_arch: dict[str, list[FrozenTrial]], metric: str, maximize: bool) -> Figure:
    archs = sorted(per_arch, key=lambda a: max(t.value for t in per_arch[a]) * (1 if maximize else -1))
    fig = _figure(WIDTH, 0.55 * len(archs) + 1.5)
    ax = fig.subplots()
    for y, arch in enumerate(archs):
        values = [t.value for t in per_arch[arch]]
        top = max(values) if maximize else min(values)
        ax.scatter(values, [y] * len(values), color=SKY, s=18, alpha=0.8, zorder=3)
        ax.scatter([top], [y], color=BLUE, s=70, marker="D", zorder=4)
        ax.annotate(f"{top:.4f}", (top, y), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(range(len(archs)), labels=[f"{a} (n = {len(per_arch[a])})" for a in archs])
    ax.set_ylim(-0.6, len(archs) - 0.3)
    fig.legend(handles=[Line2D([], [], color=SKY, marker="o", linestyle="none", label="a complete trial"),
                       Line2D([], [], color=BLUE, marker="D", linestyle="none", label="best of the architecture")],
              loc="outside lower center", ncol=2)
    ax.set(xlabel=metric_label(metric).capitalize(), title=f"Best {metric_label(metric)} per architecture")
    ax.grid(axis="y", visible=False)
    return fig


@_styled
def states_figure(counts: dict[str, int]) -> Figure:
    states = [s for s in STATES if counts.get(s) or s in ("complete", "pruned")][::-1]
    fig = _figure(WIDTH, 0.42 * len(states) + 1.2)
    ax = fig.subplots()
    values = [counts.get(s, 0) for s in states]
    ax.barh(states, values, color=[STATE_COLOURS[s] for s in states], height=0.6)
    for y, v in enumerate(values):
        ax.text(v + max(values + [1]) * 0.01, y, str(v), va="center", fontsize=9)
    ax.set_xlim(0, max(values + [1]) * 1.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="Number of trials", title=f"Trial states ({sum(counts.values())} trials)")
    ax.grid(axis="y", visible=False)
    return fig


@_styled
def pruning_figure(rows: list[tuple[int, str, int, int]], saved: int, budget: int) -> Figure:
    """rows: (trial number, state, epochs run, epoch budget) of the finished trials."""
    fig = _figure()
    ax = fig.subplots()
    numbers = [r[0] for r in rows]
    run = [r[2] for r in rows]
    spared = [max(0, r[3] - r[2]) for r in rows]
    colours = [STATE_COLOURS[r[1]] for r in rows]
    width = 0.8 if len(rows) < 80 else 1.0
    ax.bar(numbers, run, color=colours, width=width)
    ax.bar(numbers, spared, bottom=run, color="white", edgecolor="0.55", hatch="////", width=width, lw=0.5)
    fig.legend(handles=[Patch(color=BLUE, label="epochs run, complete trial"),
                       Patch(color=ORANGE, label="epochs run, pruned trial"),
                       Patch(facecolor="white", edgecolor="0.55", hatch="////", label="epochs saved by pruning")],
              loc="outside lower center", ncol=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    share = 100 * saved / budget if budget else 0.0
    ax.set(xlabel="Trial number", ylabel="Epochs",
           title=f"Epochs saved by pruning: {saved} of {budget} ({share:.0f} %)")
    ax.grid(axis="x", visible=False)
    return fig


@_styled
def per_class_figure(names: list[str], accs: list[list[float | None]], counts: list[int], overall: float,
                     multi_label: bool) -> Figure:
    """accs: per run, per class accuracy."""
    k = len(names)
    means, sds, points = [], [], []
    for i in range(k):
        vals = [run[i] for run in accs if run[i] is not None]
        points.append(vals)
        means.append(statistics.fmean(vals) if vals else math.nan)
        sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
    fig = _figure(WIDTH, 0.36 * k + 1.6)
    ax = fig.subplots()
    ys = list(range(k))
    # Whiskers are clipped to [0, 1]: an accuracy cannot leave that range, whatever mean ± sd says.
    spread = [[min(sd, m) for m, sd in zip(means, sds)], [min(sd, 1 - m) for m, sd in zip(means, sds)]]
    ax.barh(ys, means, xerr=spread if len(accs) > 1 else None, color=BLUE, height=0.6,
            error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
    if len(accs) > 1:
        for y, vals in zip(ys, points):
            ax.scatter(vals, [y] * len(vals), color="black", s=8, zorder=4)
    for y, m in zip(ys, means):  # the values in a column right of the axis: never on a bar or a whisker
        if not math.isnan(m):
            ax.text(1.03, y, f"{m:.2f}", va="center", fontsize=8)
    what = "positives" if multi_label else "test images"
    ax.set_yticks(ys, labels=[f"{n} (n = {c})" for n, c in zip(names, counts)])
    ax.invert_yaxis()
    ax.axvline(overall, color=VERMILLION, linestyle="--", lw=1.2)
    handles = [Line2D([], [], color=VERMILLION, linestyle="--", label=f"overall test accuracy {overall:.3f}")]
    if len(accs) > 1:
        handles += [Line2D([], [], color="black", marker="o", markersize=3, linestyle="none", label="one run"),
                    Line2D([], [], color="black", lw=1, label=f"± 1 sd over {len(accs)} runs")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    ax.set_xlim(0, 1.12)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.spines["bottom"].set_bounds(0, 1)
    ax.set_xlabel("Accuracy on the class's " + ("labels (threshold 0.5)" if multi_label else "test images (recall)"))
    fig.suptitle(f"Per-class test accuracy (n: {what} of the class)")  # centred on the figure, not the axes
    ax.grid(axis="y", visible=False)
    return fig


@_styled
def test_metrics_figure(runs: list[tuple[str, float, float]], published: dict[str, tuple[float, float]] | None,
                        ours: str) -> Figure:
    """Dot plot of test ACC and AUC: each run, their mean ± sd, and the published methods when known."""
    accs = [r[1] for r in runs]
    aucs = [r[2] for r in runs]
    rows = list(published or {})
    rows_ours = f"{ours} (this work)"
    labels = rows + [rows_ours]
    fig = _figure(WIDTH + 1.0, 0.42 * len(labels) + 1.9)
    acc_ax, auc_ax = fig.subplots(1, 2, sharey=True)
    for ax, mine, index, name in ((acc_ax, accs, 1, "Test accuracy"), (auc_ax, aucs, 0, "Test AUC")):
        y_ours = len(rows)
        if published:
            ax.scatter([published[m][index] for m in rows], range(len(rows)), color="0.45", s=30, zorder=3)
            for y, m in enumerate(rows):
                ax.annotate(f"{published[m][index]:.3f}", (published[m][index], y), xytext=(0, -6),
                            textcoords="offset points", ha="center", va="top", fontsize=7, color="0.35")
        finite = [v for v in mine if math.isfinite(v)]
        if finite:
            mean = statistics.fmean(finite)
            sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
            # the whisker is clipped to [0, 1], where ACC and AUC live
            ax.errorbar([mean], [y_ours], xerr=[[min(sd, mean)], [min(sd, 1 - mean)]] if len(finite) > 1 else None,
                        fmt="D", color=BLUE, markersize=7, capsize=4, zorder=4)
            ax.annotate(f"{mean:.3f}", (mean, y_ours), xytext=(0, -9), textcoords="offset points", ha="center",
                        va="top", fontsize=8, color=BLUE)
            if len(finite) > 1:
                ax.scatter(finite, [y_ours] * len(finite), color="black", s=10, zorder=5)
        values = finite + ([published[m][index] for m in rows] if published else [])
        if finite:  # room for the whiskers too
            values += [mean - sd, mean + sd]
        if values:
            low, high = min(values), max(values)
            ax.set_xlim(max(0.0, low - 0.06 - (high - low) * 0.1), min(1.0, high) + 0.02)
        ax.set_xlabel(name + " (0 to 1)")
        ax.grid(axis="y", visible=False)
    acc_ax.set_yticks(range(len(labels)), labels=labels)
    acc_ax.set_ylim(len(labels) - 0.2, -0.6)  # top to bottom, with room for the value under the last row
    for label in acc_ax.get_yticklabels():
        if label.get_text() == rows_ours:
            label.set_fontweight("bold")
    handles = [Line2D([], [], color=BLUE, marker="D", linestyle="none",
                      label=f"this work: mean{' ± sd' if len(runs) > 1 else ''} of {len(runs)} run"
                            f"{'s' if len(runs) > 1 else ''}")]
    if len(runs) > 1:
        handles.append(Line2D([], [], color="black", marker="o", markersize=3, linestyle="none", label="one run"))
    if published:
        handles.append(Line2D([], [], color="0.45", marker="o", linestyle="none", label=benchmarks.SOURCE))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    fig.suptitle("Test accuracy and AUC" + (" beside the published MedMNIST v2 results" if published else ""))
    return fig


# --- tables ------------------------------------------------------------------------------------------------


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    align: str  # one of l, r, c per column
    footer: list[list[str]] = field(default_factory=list)  # below a rule: means, totals
    note: str = ""

    def markdown(self) -> str:
        bar = {"l": ":--", "r": "--:", "c": ":-:"}
        lines = ["| " + " | ".join(_md(c) for c in self.columns) + " |",
                 "|" + "|".join(bar[a] for a in self.align) + "|"]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.rows + self.footer]
        text = f"Table: {self.title}\n\n" + "\n".join(lines) + "\n"
        return text + (f"\n{self.note}\n" if self.note else "")

    def latex(self) -> str:
        size = "  \\small\n" if len(self.columns) > 6 else ""
        body = [" & ".join(_tex(c) for c in self.columns) + r" \\", r"\midrule"]
        body += [" & ".join(_tex(c) for c in row) + r" \\" for row in self.rows]
        if self.footer:
            body += [r"\midrule"] + [" & ".join(_tex(c) for c in row) + r" \\" for row in self.footer]
        caption = _tex(self.title) + (". " + _tex(self.note) if self.note else "")
        return ("% Generated by `search report`. Needs \\usepackage{booktabs} in the preamble.\n"
                "\\begin{table}[htbp]\n  \\centering\n" + size +
                f"  \\caption{{{caption}}}\n  \\label{{tab:{self.name.replace('_', '-')}}}\n"
                f"  \\begin{{tabular}}{{{self.align}}}\n    \\toprule\n"
                + "".join(f"    {line}\n" for line in body) +
                "    \\bottomrule\n  \\end{tabular}\n\\end{table}\n")

    def html(self) -> str:
        def row(cells: list[str], tag: str = "td") -> str:
            return "<tr>" + "".join(f'<{tag} class="{a}">{html.escape(c)}</{tag}>'
                                    for c, a in zip(cells, self.align)) + "</tr>"
        head = row(self.columns, "th")
        body = "".join(row(r) for r in self.rows)
        foot = "".join(row(r) for r in self.footer)
        return (f"<table><thead>{head}</thead><tbody>{body}</tbody>"
                + (f"<tfoot>{foot}</tfoot>" if foot else "") + "</table>")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
        "×": r"$\times$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _pm(values: list[float], digits: int = 3) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = statistics.fmean(finite)
    return f"{mean:.{digits}f} ± {statistics.stdev(finite):.{digits}f}" if len(finite) > 1 else f"{mean:.{digits}f}"


# --- the report ----------------------------------------------------------------------------------------------


@dataclass
class FigureItem:
    name: str
    title: str
    caption: str
    figure: Figure


@dataclass
class Note:
    title: str
    text: str


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    items: list[FigureItem | Table | Note] = field(default_factory=list)


@dataclass
class Run:
    label: str  # the folder, relative to the --run argument's parent
    folder: Path
    metrics: dict[str, Any]


def load_runs(dirs: Iterable[Path]) -> list[Run]:
    """`search train` folders: a run (metrics.json) or a `--seeds` folder of runs (seed-*/metrics.json)."""
    runs: list[Run] = []
    for d in dirs:
        if (d / "metrics.json").is_file():
            found = [d]
        else:
            found = sorted((p.parent for p in d.glob("*/metrics.json")), key=lambda p: _natural(p.name))
        if not found:
            raise SearchError(f"--run {d}: no metrics.json there nor in its subfolders; pass a folder that "
                              f"`search train` wrote (--out), or a `search train --seeds` folder")
        for folder in found:
            try:
                metrics = json.loads((folder / "metrics.json").read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise SearchError(f"{folder / 'metrics.json'} cannot be read: {err}") from None
            label = folder.name if folder == d else f"{d.name}/{folder.name}"
            runs.append(Run(label, folder, metrics))
    datasets = sorted({r.metrics.get("dataset", "?") for r in runs})
    if len(datasets) > 1:
        raise SearchError(f"the runs are on different datasets ({', '.join(datasets)}); "
                          f"report the runs of one dataset at a time")
    return runs


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def study_section(study: optuna.Study) -> tuple[Section, Table]:
    trials = study.get_trials(deepcopy=False)
    metric = study.user_attrs.get("metric", "value")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    ranked = sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))
    best = ranked[0] if ranked else None
    counts = Counter(t.state.name.lower() for t in trials)
    s = Section("search", "Search", _study_intro(study, trials, counts, best, metric))
    n_done = len(done)

    if done:
        s.items.append(FigureItem("optimisation_history", "Optimisation history",
                                  f"Each dot is a complete trial's best {metric_label(metric)} (its kept epoch); the "
                                  f"line is the best so far. Pruned trials are shown at the last value they "
                                  f"reported.", optimisation_history_figure(trials, metric, maximize)))
    else:
        s.items.append(Note("Optimisation history", "No complete trial yet: nothing to draw."))

    importances, why = _importances(study, done)
    if importances:
        s.items.append(FigureItem(
            "importances", "Hyperparameter importances",
            f"fANOVA importances (Optuna's FanovaImportanceEvaluator, seed 0) over the {n_done} complete trials, "
            f"for the parameters set in every one of them (conditional ones, set only for some, are left out). "
            f"With few trials they are rough estimates.", importance_figure(importances, n_done)))
    else:
        s.items.append(Note("Hyperparameter importances", f"Left out: {why}."))

    parallel = parallel_figure(trials, metric, maximize)
    if parallel is not None:
        s.items.append(FigureItem(
            "parallel_coordinates", "Parallel coordinates",
            "One line per complete trial through its parameter values (on each parameter's search range; log "
            "scale where the space samples on a log scale) to its objective value; the best trials are yellow "
            "and drawn on top. 'not set': a conditional parameter the trial did not use.", parallel))
    else:
        s.items.append(Note("Parallel coordinates", "Left out: no complete trial with parameters yet."))

    curves = learning_curves_figure(trials, metric, best)
    if curves is not None:
        s.items.append(FigureItem(
            "learning_curves", "Learning curves",
            f"The {metric_label(metric)} each trial reported after every epoch (what the pruner saw). Pruned "
            f"trials end with an x at the epoch where they were stopped.", curves))
    else:
        s.items.append(Note("Learning curves", "Left out: no trial has reported an epoch yet."))

    per_arch: dict[str, list[FrozenTrial]] = {}
    for t in done:
        per_arch.setdefault(_architecture(t), []).append(t)
    if per_arch:
        s.items.append(FigureItem(
            "best_per_architecture", "Best per architecture",
            f"Every complete trial's {metric_label(metric)} by architecture (n: complete trials); the diamond "
            f"and number mark the architecture's best.", architecture_figure(per_arch, metric, maximize)))
    else:
        s.items.append(Note("Best per architecture", "Left out: no complete trial yet."))
    all_arch = Counter(_architecture(t) for t in trials)
    pruned_arch = Counter(_architecture(t) for t in trials if t.state == TrialState.PRUNED)
    arch_rows = []
    for arch in sorted(per_arch, key=lambda a: -max(t.value for t in per_arch[a]) if maximize
                       else min(t.value for t in per_arch[a])):
        top = sorted(per_arch[arch], key=lambda t: -t.value if maximize else t.value)[0]
        arch_rows.append([arch, str(all_arch[arch]), str(len(per_arch[arch])), str(pruned_arch[arch]),
                          f"{top.value:.4f}", str(top.number)])
    if arch_rows:
        s.items.append(Table("best_per_architecture", f"Best {metric_label(metric)} per architecture",
                             ["Architecture", "Trials", "Complete", "Pruned", f"Best {metric_label(metric)}",
                              "Trial"], arch_rows, "lrrrrr"))

    s.items.append(FigureItem("trial_states", "Trial states", "How the trials ended. Pruned: stopped early by the "
                              "pruner; failed: an error or an interruption (the reason is in trials.csv).",
                              states_figure(dict(counts))))
    s.items.append(Table("trial_states", "Trials by state", ["State", "Trials"],
                         [[st, str(counts.get(st, 0))] for st in STATES], "lr",
                         footer=[["total", str(len(trials))]]))

    rows, saved, budget, seconds_saved = _pruning_rows(study, trials)
    if rows:
        s.items.append(FigureItem(
            "pruning_savings", "Epochs saved by pruning",
            "Per finished trial, the epochs it ran and (hatched) the epochs of its budget it did not run because "
            "the pruner stopped it.", pruning_figure(rows, saved, budget)))
        run = budget - saved
        s.items.append(Table(
            "pruning_savings", "Epochs saved by pruning (complete and pruned trials)",
            ["Finished trials", "Pruned", "Epoch budget", "Epochs run", "Epochs saved", "Saved (%)",
             "Time saved (est.)"],
            [[str(len(rows)), str(sum(r[1] == "pruned" for r in rows)), str(budget), str(run), str(saved),
              f"{100 * saved / budget:.1f}" if budget else "0", _duration(seconds_saved)]], "rrrrrrr",
            note="Time saved: each pruned trial's unrun epochs times its own mean epoch time."))
    else:
        s.items.append(Note("Epochs saved by pruning", "Left out: no finished trial yet."))

    if ranked:
        names: list[str] = []
        for t in ranked[:10]:
            names += [n for n in t.params if n not in names]
        s.items.append(Table(
            "top_trials", f"The {min(10, len(ranked))} best trials by {metric_label(metric)}",
            ["Rank", "Trial", metric_label(metric).capitalize(), *names, "Epochs"],
            [[str(i), str(t.number), f"{t.value:.4f}", *(_fmt(t.params.get(n)) for n in names),
              str(t.user_attrs.get("epochs_run", ""))] for i, t in enumerate(ranked[:10], 1)],
            "rrr" + "l" * len(names) + "r"))

    columns, rows_all = trial_rows(study)
    cells = [[_fmt(v, 4) if isinstance(v, float) else ("" if v is None else str(v)) for v in r] for r in rows_all]
    for row in cells:  # a failure's reason can be a long message: trials.csv keeps it whole
        row[-1] = row[-1] if len(row[-1]) <= 60 else row[-1][:57] + "..."
    trials_table = Table("trials", f"All {len(trials)} trials", columns, cells,
                         "rlr" + "l" * (len(columns) - 6) + "rrl", note="The reasons of failed trials are cut to "
                         "60 characters here; trials.csv has them whole.")
    return s, trials_table


def _study_intro(study: optuna.Study, trials: list[FrozenTrial], counts: Counter[str], best: FrozenTrial | None,
                 metric: str) -> str:
    dataset = html.escape(str(study.user_attrs.get("dataset", "?")))
    parts = [f"Study <b>{html.escape(study.study_name)}</b> on <b>{dataset}</b>, objective: "
             f"{html.escape(metric_label(metric))} ({study.direction.name.lower()}), "
             f"{len(trials)} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES) + "."]
    if best is not None:
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
        parts.append(f"Best: trial {best.number}, {html.escape(metric_label(metric))} {best.value:.4f} "
                     f"({html.escape(params)}).")
    parts.append("The test split is never used during the search: every number in this section is on the "
                 "validation split.")
    return " ".join(parts)


def _architecture(t: FrozenTrial) -> str:
    return str(t.params.get("architecture") or t.user_attrs.get("config", {}).get("architecture", "?"))


def _importances(study: optuna.Study, done: list[FrozenTrial]) -> tuple[dict[str, float] | None, str]:
    if len(done) < 2:
        return None, f"importances need at least 2 complete trials; this study has {len(done)}"
    if len({t.value for t in done}) < 2:
        return None, "every complete trial has the same value, so no parameter explains any of its variance"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as err:
        return None, f"Optuna could not compute them ({err})"
    if not importances:
        return None, "no parameter is set in every complete trial"
    return importances, ""


def _pruning_rows(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[list[tuple[int, str, int, int]], int,
                                                                            int, float]:
    rows, seconds = [], 0.0
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        budget = int(t.user_attrs.get("config", {}).get("epochs") or study.user_attrs.get("epochs") or 0)
        run = int(t.user_attrs.get("epochs_run") or len(t.intermediate_values))
        rows.append((t.number, t.state.name.lower(), run, max(budget, run)))
        if t.state == TrialState.PRUNED:
            seconds += max(0, budget - run) * float(t.user_attrs.get("epoch_seconds") or 0.0)
    saved = sum(r[3] - r[2] for r in rows)
    return rows, saved, sum(r[3] for r in rows), seconds


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def runs_section(runs: list[Run], study_dataset: str | None) -> Section:
    first = runs[0].metrics
    dataset = first.get("dataset", "?")
    archs = sorted({r.metrics.get("architecture", "?") for r in runs})
    ours = " / ".join(archs)
    intro = (f"{len(runs)} final run{'s' if len(runs) > 1 else ''} of <b>{html.escape(ours)}</b> on "
             f"<b>{html.escape(dataset)}</b> (`search train`): each keeps the epoch with the best validation "
             f"metric and is evaluated once on the test split.")
    if study_dataset and study_dataset != dataset:
        intro += (f" <b>Note:</b> the study searched on {html.escape(study_dataset)}, these runs are on "
                  f"{html.escape(dataset)}.")
    s = Section("final", "Final runs", intro)
    s.items.append(FigureItem(
        "training_curves", "Training curves",
        "Training and validation loss (left) and validation accuracy and AUC (right) per epoch; the star marks "
        "the epoch whose weights were kept and tested.",
        history_figure([(r.label, r.metrics.get("history", [])) for r in runs],
                       f"Training curves: {ours} on {dataset}",
                       kept={r.label: r.metrics.get("best_epoch") for r in runs})))

    task = first.get("task", "")
    multi_label = task.startswith("multi-label")
    with_classes = [r for r in runs if r.metrics.get("test_per_class_acc") is not None]
    k = len(with_classes[0].metrics["test_per_class_acc"]) if with_classes else 0
    names = class_names(dataset, k)
    confusions = [r.metrics["test_confusion"] for r in with_classes if r.metrics.get("test_confusion")]
    if confusions:
        mean_of = f"mean of {len(confusions)} runs" if len(confusions) > 1 else "counts in brackets"
        s.items.append(FigureItem(
            "confusion_matrix", "Test confusion matrix",
            f"Rows: true class, columns: predicted class; each cell is the % of the row's test images "
            f"({mean_of}); blank cells: no image.",
            confusion_figure(confusions, names, f"Test confusion matrix, % of each true class ({mean_of})")))
    elif multi_label:
        s.items.append(Note("Test confusion matrix", "Left out: a multi-label task has no single confusion "
                                                     "matrix; see the per-class (per-label) accuracy."))
    else:
        s.items.append(Note("Test confusion matrix", "Left out: these runs' metrics.json has no test confusion "
                                                     "matrix (written by an older `search train`); train again."))
    if with_classes:
        accs = [r.metrics["test_per_class_acc"] for r in with_classes]
        counts = with_classes[0].metrics.get("test_class_counts") or [0] * k
        overall = statistics.fmean(r.metrics["test_acc"] for r in with_classes)
        s.items.append(FigureItem(
            "per_class_accuracy", "Per-class test accuracy",
            ("Accuracy of each label at threshold 0.5" if multi_label else
             "Share of each class's test images predicted as that class (its recall)")
            + (f"; bars: mean of {len(accs)} runs, whiskers: ± one standard deviation." if len(accs) > 1 else "."),
            per_class_figure(names, accs, counts, overall, multi_label)))
        named = names != [str(i) for i in range(k)]  # a Name column only where classes have names
        s.items.append(Table(
            "per_class_accuracy", "Per-class test accuracy" + (" (mean ± sd over runs)" if len(accs) > 1 else ""),
            ["Class", *(["Name"] if named else []), "Test images" if not multi_label else "Positives", "Accuracy"],
            [[str(i), *([names[i]] if named else []), str(counts[i]), _pm([a[i] for a in accs])] for i in range(k)],
            "rlrr" if named else "rrr",
            footer=[["all", *([""] if named else []), str(sum(counts)) if not multi_label else "",
                     _pm([r.metrics["test_acc"] for r in with_classes])]]))

    acc = [r.metrics["test_acc"] for r in runs]
    auc = [r.metrics["test_auc"] for r in runs]
    s.items.append(Table(
        "test_metrics", "Test accuracy and AUC of each run",
        ["Run", "Architecture", "Seed", "Kept epoch", "Val ACC", "Test ACC", "Test AUC"],
        [[r.label, str(r.metrics.get("architecture", "?")), str(r.metrics.get("seed", "")),
          f"{r.metrics.get('best_epoch', '?')} of {r.metrics.get('epochs', '?')}",
          f"{r.metrics.get('val_acc', math.nan):.4f}", f"{r.metrics['test_acc']:.4f}",
          f"{r.metrics['test_auc']:.4f}"] for r in runs], "llrrrrr",
        footer=[["mean ± sd" if len(runs) > 1 else "mean", "", "", "", _pm([r.metrics.get("val_acc", math.nan)
                                                                             for r in runs], 4),
                 _pm(acc, 4), _pm(auc, 4)]],
        note="sd: sample standard deviation (n - 1) over the runs." if len(runs) > 1 else ""))
    published = benchmarks.published(dataset)
    s.items.append(FigureItem(
        "test_metrics", "Test ACC and AUC",
        ("Each run (dots) and their mean ± sd (diamond)" if len(runs) > 1 else "The run's test accuracy and AUC")
        + (f", beside the published results of {benchmarks.SOURCE} (grey)." if published else
           f". No published MedMNIST v2 results are kept for {dataset}."),
        test_metrics_figure([(r.label, r.metrics["test_acc"], r.metrics["test_auc"]) for r in runs], published,
                            ours)))
    if published:
        rows = [[m, f"{v[1]:.3f}", f"{v[0]:.3f}"] for m, v in published.items()]
        s.items.append(Table(
            "benchmark", f"Test ACC and AUC on {dataset} beside {benchmarks.SOURCE}",
            ["Method", "ACC", "AUC"], rows, "lrr",
            footer=[[f"{ours}, this work ({len(runs)} run{'s' if len(runs) > 1 else ''})", _pm(acc), _pm(auc)]],
            note=f"Published values: {benchmarks.CITATION}"))
    else:
        s.items.append(Note("Published benchmark", f"No published MedMNIST v2 values are kept for '{dataset}' "
                                                   f"(search/benchmarks.py lists: "
                                                   f"{', '.join(benchmarks.MEDMNIST_V2)})."))
    return s


def write_report(study: optuna.Study, run_dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Build every figure and table and write the folder; returns {"index": path, "figures": n, "tables": n}."""
    runs = load_runs(run_dirs) if run_dirs else []
    if out.exists() and not out.is_dir():
        raise SearchError(f"-o {out} is a file; choose a folder")
    if not out.parent.exists():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another -o")
    search, trials_table = study_section(study)
    sections = [search]
    if runs:
        sections.append(runs_section(runs, study.user_attrs.get("dataset")))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    n_fig = n_tab = 0
    for section in sections:
        for item in section.items:
            if isinstance(item, FigureItem):
                with rc_context(STYLE):
                    item.figure.savefig(out / "figures" / f"{item.name}.png")
                    item.figure.savefig(out / "figures" / f"{item.name}.pdf", metadata={"Creator": "search report"})
                n_fig += 1
            elif isinstance(item, Table):
                (out / "tables" / f"{item.name}.md").write_text(item.markdown())
                (out / "tables" / f"{item.name}.tex").write_text(item.latex())
                n_tab += 1
    (out / "tables" / "trials.md").write_text(trials_table.markdown())
    (out / "tables" / "trials.tex").write_text(trials_table.latex())
    write_csv(study, out / "trials.csv")
    cite = bool(runs) and benchmarks.published(runs[0].metrics.get("dataset", "")) is not None
    (out / "index.html").write_text(_page(study, sections, trials_table, cite))
    return {"index": out / "index.html", "figures": n_fig, "tables": n_tab + 1}


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #1a1a1a; line-height: 1.5; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 2rem; font-size: 1.1rem; }
.meta { color: #555; font-size: 0.9rem; }
figure { margin: 1rem 0 2rem; } figure img { width: 100%; max-width: 52rem; height: auto; display: block; }
figcaption, .caption { font-size: 0.9rem; color: #333; margin-top: 0.4rem; }
table { border-collapse: collapse; margin: 0.5rem 0 0.3rem; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
thead th { border-top: 2px solid #222; border-bottom: 1px solid #222; }
tbody tr:last-child td { border-bottom: 2px solid #222; } tfoot td { border-bottom: 2px solid #222; }
th, td { padding: 0.25rem 0.7rem; } .l { text-align: left; } .r { text-align: right; } .c { text-align: center; }
.note { background: #fff8e1; border-left: 4px solid #E69F00; padding: 0.5rem 0.8rem; font-size: 0.9rem; }
.files a { margin-right: 0.6rem; } pre { background: #f5f5f5; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
nav ol { columns: 2; font-size: 0.9rem; } details { margin: 1rem 0; }
"""


def _page(study: optuna.Study, sections: list[Section], trials_table: Table, cite: bool) -> str:
    fig_no = tab_no = 0
    toc, body = [], []
    for section in sections:
        body.append(f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>')
        if section.intro:
            body.append(f"<p>{section.intro}</p>")
        for item in section.items:
            if isinstance(item, FigureItem):
                fig_no += 1
                anchor = f"fig-{item.name}"
                toc.append(f'<li><a href="#{anchor}">Figure {fig_no}: {html.escape(item.title)}</a></li>')
                body.append(
                    f'<figure id="{anchor}"><h3>Figure {fig_no}. {html.escape(item.title)}</h3>'
                    f'<img src="figures/{item.name}.png" alt="{html.escape(item.title)}">'
                    f"<figcaption>{html.escape(item.caption)} <span class=\"files\">"
                    f'<a href="figures/{item.name}.png">PNG</a><a href="figures/{item.name}.pdf">PDF</a>'
                    f"</span></figcaption></figure>")
            elif isinstance(item, Table):
                tab_no += 1
                anchor = f"tab-{item.name}"
                toc.append(f'<li><a href="#{anchor}">Table {tab_no}: {html.escape(item.title)}</a></li>')
                body.append(
                    f'<div id="{anchor}"><h3>Table {tab_no}. {html.escape(item.title)}</h3>{item.html()}'
                    f'<p class="caption">{html.escape(item.note)} <span class="files">'
                    f'<a href="tables/{item.name}.md">Markdown</a><a href="tables/{item.name}.tex">LaTeX</a>'
                    f"</span></p></div>")
            else:
                body.append(f'<h3>{html.escape(item.title)}</h3><p class="note">{html.escape(item.text)}</p>')
        if section.id == "search":
            body.append(f"<details><summary>{html.escape(trials_table.title)} (also as "
                        f'<a href="trials.csv">CSV</a>, <a href="tables/trials.md">Markdown</a>, '
                        f'<a href="tables/trials.tex">LaTeX</a>)</summary>{trials_table.html()}</details>')
        body.append("</section>")
    if cite:
        body.append('<section id="citation"><h2>Citing the published values</h2>'
                    f"<p>{html.escape(benchmarks.CITATION)}</p><pre>{html.escape(benchmarks.BIBTEX)}</pre>"
                    "</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Report: {html.escape(study.study_name)}</title><style>{CSS}</style></head><body>"
            f"<h1>Report: study {html.escape(study.study_name)}</h1>"
            f'<p class="meta">Generated {stamp} by <code>search report</code> (Optuna {optuna.__version__}). '
            f"Figures: PNG and PDF in figures/; tables: Markdown and LaTeX (booktabs) in tables/.</p>"
            f"<nav><ol>{''.join(toc)}</ol></nav>{''.join(body)}</body></html>\n")
