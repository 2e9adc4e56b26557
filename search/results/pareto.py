"""The Pareto front of a study with several objectives (search/hpo/goals.py): its figure and table.

With accuracy against a cost (parameters, seconds per epoch, latency) there is no single best trial, only the
trials that no other complete trial beats in every objective at once: the front. The figure puts the first
objective (the accuracy) up the page against each other objective, every complete trial a dot, the front's
trials marked and joined; the table lists the front with its values and parameters.
"""
from __future__ import annotations

import optuna
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from optuna.trial import FrozenTrial, TrialState

from search.hpo import goals
from search.hpo.trial_figures import SKY, STYLE, VERMILLION, WIDTH, metric_label
from search.results.sections import FigureItem, Note
from search.results.tables import Table
from search.results.tables import fmt as _fmt

LOG_SCALE = ("params", "latency_ms", "epoch_seconds")  # costs spread over orders of magnitude


@rc_context(STYLE)
def pareto_figure(trials: list[FrozenTrial], objectives: goals.Objectives, front: list[FrozenTrial]) -> Figure:
    """One panel per objective after the first: the first objective (y) against it (x); with two objectives the
    front is joined as a staircase."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    on_front = {t.number for t in front}
    y_metric, others = objectives[0][0], objectives[1:]
    fig = Figure(figsize=(WIDTH, 3.6 if len(others) == 1 else 3.0 * len(others)))
    axes = fig.subplots(len(others), 1, squeeze=False)[:, 0]
    for ax, (k, (x_metric, x_dir)) in zip(axes, enumerate(others, 1)):
        rest = [t for t in done if t.number not in on_front]
        ax.scatter([t.values[k] for t in rest], [t.values[0] for t in rest], color=SKY, s=20, alpha=0.8,
                   label="complete trial", zorder=3)
        ranked = sorted(front, key=lambda t: (t.values[k], t.values[0]))
        if len(others) == 1:  # with more objectives the front is not a line in any one panel
            ax.plot([t.values[k] for t in ranked], [t.values[0] for t in ranked], color=VERMILLION, lw=1.2,
                    drawstyle="steps-post", alpha=0.8, zorder=4)
        ax.scatter([t.values[k] for t in ranked], [t.values[0] for t in ranked], color=VERMILLION, s=46,
                   marker="D", edgecolor="black", linewidth=0.5, label=f"Pareto front ({len(front)})", zorder=5)
        for t in ranked:
            ax.annotate(str(t.number), (t.values[k], t.values[0]), xytext=(4, 4), textcoords="offset points",
                        fontsize=7)
        xs = [t.values[k] for t in done]
        if x_metric in LOG_SCALE and min(xs) > 0 and max(xs) / min(xs) >= 30:  # over 1.5 decades: log axis
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        better = "lower" if x_dir == "minimize" else "higher"
        ax.set(xlabel=f"{metric_label(x_metric).capitalize()}, {better} is better",
               ylabel=metric_label(y_metric).capitalize())
        ax.legend(loc="lower right" if x_dir == "minimize" else "lower left")
    axes[0].set_title(f"Pareto front: {metric_label(y_metric)} against {metric_label(others[0][0])}"
                      if len(others) == 1 else f"Pareto front of {len(objectives)} objectives, by "
                      f"{metric_label(y_metric)}")
    return fig


def _short(v: float) -> str:
    """A log axis' tick: 300k, 1.2M, 0.5 (not 3 x 10^5)."""
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def pareto_items(study: optuna.Study) -> list[object]:
    """The figure and table of the front, or a note saying why there is none yet."""
    objectives = goals.of_study(study)
    front = goals.front(study)
    if not front:
        return [Note("Pareto front", "Left out: no complete trial yet.")]
    trials = study.get_trials(deepcopy=False)
    names = " and ".join(f"{metric_label(m)} ({d})" for m, d in objectives)
    caption = (f"Every complete trial by its objectives ({names}); the diamonds are the Pareto front, the trials "
               f"no other complete trial beats in every objective at once (numbers: trial numbers). Export one "
               f"with `search export --study {study.study_name} --trial N`.")
    params: list[str] = []
    for t in front:
        params += [n for n in t.params if n not in params]
    rows = [[str(t.number), *(goals.fmt(m, v) for (m, _), v in zip(objectives, t.values)),
             *(_fmt(t.params.get(n)) for n in params)] for t in front]
    table = Table("pareto_front", f"The Pareto front: {len(front)} of "
                  f"{sum(t.state == TrialState.COMPLETE for t in trials)} complete trials",
                  ["Trial", *(metric_label(m).capitalize() for m, _ in objectives), *params], rows,
                  "r" + "r" * len(objectives) + "l" * len(params))
    return [FigureItem("pareto_front", "Pareto front", caption, pareto_figure(trials, objectives, front)), table]
