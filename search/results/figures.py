"""Figures of a study, its trials and its final runs, in the house style of search/hpo/trial_figures.py (which
also draws each trial's learning curve and confusion matrix, for the worker and for a report alike).

Optuna's own matplotlib plots are not used, because they switch the global style to ggplot, label every axis
"Objective Value" and do not mark pruned trials.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from matplotlib import colormaps, rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, MaxNLocator
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search.hpo.trial_figures import (
    BLUE,
    ORANGE,
    SKY,
    STYLE,
    VERMILLION,
    WIDTH,
    epoch_axis,
    metric_label,
    new_figure,
)
from search.results.tables import fmt as _fmt
from search.results.trials import STATES

STATE_COLOURS = {"complete": BLUE, "pruned": ORANGE, "fail": VERMILLION, "running": SKY, "waiting": "#999999"}


@rc_context(STYLE)
def optimisation_history_figure(trials: list[FrozenTrial], metric: str, maximize: bool) -> Figure:
    fig = new_figure()
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


@rc_context(STYLE)
def importance_figure(importances: dict[str, float], n_trials: int) -> Figure:
    names = list(importances)[::-1]  # most important on top
    values = [importances[n] for n in names]
    fig = new_figure(WIDTH, 0.4 * len(names) + 1.4)
    ax = fig.subplots()
    ax.barh(names, values, color=BLUE, height=0.6)
    for y, v in enumerate(values):
        ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(values + [0.0]) * 1.15 + 0.02)
    ax.set(xlabel="Importance (fANOVA: share of the variance of the objective)",
           title=f"Hyperparameter importances ({n_trials} complete trials)")
    ax.grid(axis="y", visible=False)
    return fig


@rc_context(STYLE)
def marginal_effects_figure(trials: list[FrozenTrial], metric: str) -> Figure | None:
    """Small multiples, one panel per searched parameter: each finished trial's objective against the parameter's
    value. Complete trials are dots at their value; pruned trials are crosses at the last value they reported.
    A log axis where the space samples the parameter on a log scale; categorical parameters (numeric choices too)
    as evenly spaced categories, the points of a category spread a little sideways so that equal ones stay
    visible. A conditional parameter's panel holds only the trials that set it. None when no finished trial has
    parameters.
    """
    points: list[tuple[FrozenTrial, float]] = []
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None:
            points.append((t, t.value))
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            points.append((t, t.intermediate_values[max(t.intermediate_values)]))
    names: list[str] = []
    for t, _ in points:
        names += [n for n in t.params if n not in names]
    if not names:
        return None
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = new_figure(max(WIDTH, 2.4 * columns + 0.6), 2.3 * rows + 1.0)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax in axes[len(names):]:
        ax.remove()  # one axes per parameter, none empty
    for ax, name in zip(axes, names):
        dist = next(t.distributions[name] for t, _ in points if name in t.distributions)
        have = [(t, v) for t, v in points if name in t.params]
        if isinstance(dist, CategoricalDistribution):
            where = {c: i for i, c in enumerate(dist.choices)}
            seen: Counter[Any] = Counter()
            xs = []
            for t, _ in have:
                c = t.params[name]
                xs.append(where.get(c, math.nan) + 0.07 * _spread(seen[c]))
                seen[c] += 1
            ax.set_xticks(range(len(dist.choices)), labels=[_fmt(c) for c in dist.choices])
            ax.set_xlim(-0.5, len(dist.choices) - 0.5)
            ax.grid(axis="x", visible=False)
        else:
            xs = [float(t.params[name]) for t, _ in have]
            if getattr(dist, "log", False):
                ax.set_xscale("log")
            elif isinstance(dist, optuna.distributions.IntDistribution):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(*_padded(float(dist.low), float(dist.high), bool(getattr(dist, "log", False))))
        for state, style in (("complete", {"marker": "o", "s": 20}), ("pruned", {"marker": "x", "s": 26})):
            chosen = [(x, v) for x, (t, v) in zip(xs, have) if t.state.name.lower() == state]
            ax.scatter([x for x, _ in chosen], [v for _, v in chosen], color=STATE_COLOURS[state], zorder=3,
                       **style)
        ax.set_xlabel(name + (" (log scale)" if getattr(dist, "log", False) else ""))
        ax.set_title(f"{len(have)} trial{'s' if len(have) != 1 else ''}", fontsize=9, color="0.3")
    for row in range(rows):
        axes[row * columns].set_ylabel(metric_label(metric).capitalize())
    n_done = sum(t.state == TrialState.COMPLETE for t, _ in points)
    fig.legend(handles=[Line2D([], [], color=BLUE, marker="o", linestyle="none", label=f"complete ({n_done})"),
                        Line2D([], [], color=ORANGE, marker="x", mew=1.5, linestyle="none",
                               label=f"pruned ({len(points) - n_done}): last reported value")],
               loc="outside lower center", ncol=2)
    fig.suptitle(f"Marginal effects: {metric_label(metric)} against each searched parameter")
    return fig


def _spread(i: int) -> float:
    """0, +1, -1, +2, -2, ...: the sideways offset of a category's i-th point."""
    return (i + 1) // 2 * (1 if i % 2 else -1)


def _padded(low: float, high: float, log: bool) -> tuple[float, float]:
    """The search range with a 5% margin (of the log range on a log axis): points at a bound stay whole."""
    if log:
        margin = (high / low) ** 0.05
        return low / margin, high * margin
    margin = 0.05 * (high - low) or 0.5
    return low - margin, high + margin


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


@rc_context(STYLE)
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
    fig = new_figure(max(WIDTH, 1.05 * len(axes) + 1.8), 4.2)
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


@rc_context(STYLE)
def learning_curves_figure(trials: list[FrozenTrial], metric: str, best: FrozenTrial | None) -> Figure | None:
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return None
    fig = new_figure()
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
    epoch_axis(ax, max(s for t in curves for s in t.intermediate_values))
    ax.set(ylabel=metric_label(metric).capitalize(), title=f"Learning curves of all {len(curves)} trials")
    return fig


@rc_context(STYLE)
def architecture_figure(per_arch: dict[str, list[FrozenTrial]], metric: str, maximize: bool) -> Figure:
    archs = sorted(per_arch, key=lambda a: max(t.value for t in per_arch[a]) * (1 if maximize else -1))
    fig = new_figure(WIDTH, 0.55 * len(archs) + 1.5)
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


@rc_context(STYLE)
def states_figure(counts: dict[str, int]) -> Figure:
    states = [s for s in STATES if counts.get(s) or s in ("complete", "pruned")][::-1]
    fig = new_figure(WIDTH, 0.42 * len(states) + 1.2)
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


@rc_context(STYLE)
def pruning_figure(rows: list[tuple[int, str, int, int]], saved: int, budget: int) -> Figure:
    """rows: (trial number, state, epochs run, epoch budget) of the finished trials."""
    fig = new_figure()
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
