"""`search report`: every figure and table of a study (and of its final runs) for a report, in one folder.

    OUT/index.html            all figures and tables on one page; opens offline (no script, style or font fetched)
    OUT/figures/NAME.png|pdf  each figure, PNG at 200 dpi and PDF (TrueType fonts embedded, as journals ask)
    OUT/tables/NAME.md|tex    each table as Markdown (pandoc caption line) and LaTeX (booktabs)
    OUT/trials.csv            every trial, as `search status --csv` writes it

This module builds the search's section out of the figures (search/results/figures.py) and tables
(search/results/tables.py), takes the final runs' sections from search/results/runs.py (each `--run` a group,
compared with the first), and writes the folder and the page. Optuna computes the hyperparameter importances
(fANOVA). A figure that the data cannot support (too few trials, no confusion matrix in an old run) is left out
with a note on the page saying why.
"""
from __future__ import annotations

import html
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
from matplotlib import rc_context
from optuna.trial import FrozenTrial, TrialState

from search.errors import SearchError
from search.hpo import goals
from search.hpo.trial_figures import STYLE, metric_label
from search.results import published
from search.results.figures import (
    architecture_figure,
    importance_figure,
    learning_curves_figure,
    marginal_effects_figure,
    optimisation_history_figure,
    parallel_figure,
    pruning_figure,
    states_figure,
)
from search.results.pareto import pareto_items
from search.results.runs import Group, Run, comparison_section, load_groups, runs_section
from search.results.sections import FigureItem, Note, Section
from search.results.tables import Table
from search.results.tables import fmt as _fmt
from search.results.trials import STATES, trial_rows, write_csv
from search.results.trials import ranked as ranked_trials
from search.train.data import class_names

__all__ = ["FigureItem", "Group", "Note", "Run", "Section", "Table", "build_sections", "class_names",
           "comparison_section", "load_groups", "runs_section", "study_section", "write_report"]


@dataclass(frozen=True)
class _Study:
    """What every view of the search section reads. With several objectives every view reads the first (the
    accuracy)."""
    study: optuna.Study
    trials: list[FrozenTrial]  # every trial, by number
    ranked: list[FrozenTrial]  # the complete ones, best first
    done: list[FrozenTrial]  # the complete ones, by number
    metric: str
    maximize: bool
    multi: bool
    counts: Counter[str]  # trials by state name

    @classmethod
    def of(cls, study: optuna.Study) -> _Study:
        trials = goals.as_first(study, study.get_trials(deepcopy=False))
        ranked = goals.as_first(study, ranked_trials(study))
        return cls(study, trials, ranked, sorted(ranked, key=lambda t: t.number), goals.of_study(study)[0][0],
                   study.directions[0] == optuna.study.StudyDirection.MAXIMIZE, goals.is_multi(study),
                   Counter(t.state.name.lower() for t in trials))

    @property
    def best(self) -> FrozenTrial | None:
        return self.ranked[0] if self.ranked else None

    @property
    def label(self) -> str:
        return metric_label(self.metric)


Item = FigureItem | Note | Table


def study_section(study: optuna.Study) -> tuple[Section, Table]:
    """The search's section (the Pareto front first when there are several objectives, then one view after
    another) and the table of all trials."""
    v = _Study.of(study)
    s = Section("search", "Search", _study_intro(study, v.trials, v.counts, v.best, v.metric))
    if v.multi:
        s.items += pareto_items(study)
    for view in (_history, _importance_view, _marginal_effects, _parallel_coordinates, _learning_curves,
                 _architectures, _states, _pruning, _top_trials):
        s.items += view(v)
    return s, _trials_table(v)


def _history(v: _Study) -> list[Item]:
    if not v.done:
        return [Note("Optimisation history", "No complete trial yet: nothing to draw.")]
    return [FigureItem("optimisation_history", "Optimisation history",
                       f"Each dot is a complete trial's best {v.label} (its kept epoch); the line is the best so "
                       f"far. Pruned trials are shown at the last value they reported.",
                       optimisation_history_figure(v.trials, v.metric, v.maximize))]


def _importance_view(v: _Study) -> list[Item]:
    importances, why = _importances(v.study, v.done)
    if not importances:
        return [Note("Hyperparameter importances", f"Left out: {why}.")]
    n = len(v.done)
    return [FigureItem(
        "importances", "Hyperparameter importances",
        f"fANOVA importances (Optuna's FanovaImportanceEvaluator, seed 0) over the {n} complete trials, for the "
        f"parameters set in every one of them (conditional ones, set only for some, are left out). With few trials "
        f"they are rough estimates.", importance_figure(importances, n))]


def _marginal_effects(v: _Study) -> list[Item]:
    # beside the importances: how each parameter moved the objective, not only how much
    marginal = marginal_effects_figure(v.trials, v.metric)
    if marginal is None:
        return [Note("Marginal effects of the hyperparameters",
                     "Left out: no complete or pruned trial with parameters yet.")]
    return [FigureItem(
        "marginal_effects", "Marginal effects of the hyperparameters",
        f"One panel per searched parameter: each finished trial's {v.label} against the value it tried; complete "
        f"trials are dots (their kept epoch), pruned ones crosses at the last value they reported. Log axes where "
        f"the space samples on a log scale; categorical parameters as categories (the points of a category spread "
        f"sideways). A conditional parameter shows only the trials that set it. Each panel ignores the other "
        f"parameters, which varied too.", marginal)]


def _parallel_coordinates(v: _Study) -> list[Item]:
    parallel = parallel_figure(v.trials, v.metric, v.maximize)
    if parallel is None:
        return [Note("Parallel coordinates", "Left out: no complete trial with parameters yet.")]
    return [FigureItem(
        "parallel_coordinates", "Parallel coordinates",
        "One line per complete trial through its parameter values (on each parameter's search range; log scale "
        "where the space samples on a log scale) to its objective value; the best trials are yellow and drawn on "
        "top. 'not set': a conditional parameter the trial did not use.", parallel)]


def _learning_curves(v: _Study) -> list[Item]:
    curves = learning_curves_figure(v.trials, v.metric, v.best)
    if curves is not None:
        return [FigureItem(
            "learning_curves", "Learning curves",
            f"The {v.label} each trial reported after every epoch (what the pruner saw). Pruned trials end with an "
            f"x at the epoch where they were stopped.", curves)]
    if v.multi:
        return [Note("Learning curves", "Left out: the trials of a study with several objectives report no epochs "
                                        "to Optuna (it cannot prune them); each trial's own curve is among its "
                                        "files in the dashboard.")]
    return [Note("Learning curves", "Left out: no trial has reported an epoch yet.")]


def _architectures(v: _Study) -> list[Item]:
    per_arch: dict[str, list[FrozenTrial]] = {}
    for t in v.done:
        per_arch.setdefault(_architecture(t), []).append(t)
    if not per_arch:
        return [Note("Best per architecture", "Left out: no complete trial yet.")]
    sign = -1 if v.maximize else 1
    all_arch = Counter(_architecture(t) for t in v.trials)
    pruned_arch = Counter(_architecture(t) for t in v.trials if t.state == TrialState.PRUNED)
    rows = []
    for arch in sorted(per_arch, key=lambda a: min(sign * t.value for t in per_arch[a])):
        top = min(per_arch[arch], key=lambda t: sign * t.value)
        rows.append([arch, str(all_arch[arch]), str(len(per_arch[arch])), str(pruned_arch[arch]),
                     f"{top.value:.4f}", str(top.number)])
    return [FigureItem("best_per_architecture", "Best per architecture",
                       f"Every complete trial's {v.label} by architecture (n: complete trials); the diamond and "
                       f"number mark the architecture's best.", architecture_figure(per_arch, v.metric, v.maximize)),
            Table("best_per_architecture", f"Best {v.label} per architecture",
                  ["Architecture", "Trials", "Complete", "Pruned", f"Best {v.label}", "Trial"], rows, "lrrrrr")]


def _states(v: _Study) -> list[Item]:
    return [FigureItem("trial_states", "Trial states", "How the trials ended. Pruned: stopped early by the pruner; "
                       "failed: an error or an interruption (the reason is in trials.csv).",
                       states_figure(dict(v.counts))),
            Table("trial_states", "Trials by state", ["State", "Trials"],
                  [[st, str(v.counts.get(st, 0))] for st in STATES], "lr", footer=[["total", str(len(v.trials))]])]


def _pruning(v: _Study) -> list[Item]:
    if v.multi:
        return [Note("Epochs saved by pruning", "Left out: a study with several objectives is not pruned.")]
    rows, saved, budget, seconds_saved = _pruning_rows(v.study, v.trials)
    if not rows:
        return [Note("Epochs saved by pruning", "Left out: no finished trial yet.")]
    return [FigureItem("pruning_savings", "Epochs saved by pruning",
                       "Per finished trial, the epochs it ran and (hatched) the epochs of its budget it did not run "
                       "because the pruner stopped it.", pruning_figure(rows, saved, budget)),
            Table("pruning_savings", "Epochs saved by pruning (complete and pruned trials)",
                  ["Finished trials", "Pruned", "Epoch budget", "Epochs run", "Epochs saved", "Saved (%)",
                   "Time saved (est.)"],
                  [[str(len(rows)), str(sum(r[1] == "pruned" for r in rows)), str(budget), str(budget - saved),
                    str(saved), f"{100 * saved / budget:.1f}" if budget else "0", _duration(seconds_saved)]],
                  "rrrrrrr", note="Time saved: each pruned trial's unrun epochs times its own mean epoch time.")]


def _top_trials(v: _Study) -> list[Item]:
    if not v.ranked:
        return []
    top = v.ranked[:10]
    names: list[str] = []
    for t in top:
        names += [n for n in t.params if n not in names]
    return [Table("top_trials", f"The {len(top)} best trials by {v.label}",
                  ["Rank", "Trial", v.label.capitalize(), *names, "Epochs"],
                  [[str(i), str(t.number), f"{t.value:.4f}", *(_fmt(t.params.get(n)) for n in names),
                    str(t.user_attrs.get("epochs_run", ""))] for i, t in enumerate(top, 1)],
                  "rrr" + "l" * len(names) + "r")]


def _trials_table(v: _Study) -> Table:
    columns, rows = trial_rows(v.study)
    nv = len(goals.of_study(v.study)) if v.multi else 1  # value columns
    cells = [[_fmt(x, 4) if isinstance(x, float) else ("" if x is None else str(x)) for x in r] for r in rows]
    for row in cells:  # a failure's reason can be a long message: trials.csv keeps it whole
        row[-1] = row[-1] if len(row[-1]) <= 60 else row[-1][:57] + "..."
    return Table("trials", f"All {len(v.trials)} trials", columns, cells,
                 "rl" + "r" * nv + "l" * (len(columns) - 5 - nv) + "rrl",
                 note="The reasons of failed trials are cut to 60 characters here; trials.csv has them whole.")


def _study_intro(study: optuna.Study, trials: list[FrozenTrial], counts: Counter[str], best: FrozenTrial | None,
                 metric: str) -> str:
    dataset = html.escape(str(study.user_attrs.get("dataset", "?")))
    judged = " and ".join(f"{metric_label(m)} ({d})" for m, d in goals.of_study(study))
    parts = [f"Study <b>{html.escape(study.study_name)}</b> on <b>{dataset}</b>, "
             f"objective{'s' * goals.is_multi(study)}: {html.escape(judged)}, "
             f"{len(trials)} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES) + "."]
    if goals.is_multi(study):
        n = len(goals.front(study))
        parts.append(f"No single trial is best: {n} trial{'s are' if n != 1 else ' is'} on the Pareto front "
                     f"(below); the other views read the first objective, {html.escape(metric_label(metric))}.")
    elif best is not None:
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
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=(lambda t: t.values[0]) if goals.is_multi(study) else None)
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


def build_sections(study: optuna.Study, groups: list[Group]) -> tuple[list[Section], Table]:
    """The page's sections, in order (the search; the final runs, by group; with two or more groups the comparison
    with the first), and the table of all trials."""
    search, trials_table = study_section(study)
    sections = [search]
    if groups:
        sections.append(runs_section(groups, study.user_attrs.get("dataset")))
    if len(groups) > 1:
        sections.append(comparison_section(groups))
    return sections, trials_table


def write_report(study: optuna.Study, run_specs: Sequence[str | Path], out: Path) -> dict[str, Any]:
    """Build every figure and table and write the folder; returns {"index": path, "figures": n, "tables": n}.

    ``run_specs``: the `--run` arguments, each DIR or LABEL=DIR, each a group (search/results/runs.py). Every
    user error (a bad folder, runs on different datasets) is raised before anything is written.
    """
    groups = load_groups(run_specs) if run_specs else []
    if out.exists() and not out.is_dir():
        raise SearchError(f"-o {out} is a file; choose a folder")
    if not out.parent.exists():
        raise SearchError(f"folder {out.parent} does not exist; create it or choose another -o")
    sections, trials_table = build_sections(study, groups)
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
    cite = bool(groups) and published.published(groups[0].dataset) is not None
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
                    f"<p>{html.escape(published.CITATION)}</p><pre>{html.escape(published.BIBTEX)}</pre>"
                    "</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Report: {html.escape(study.study_name)}</title><style>{CSS}</style></head><body>"
            f"<h1>Report: study {html.escape(study.study_name)}</h1>"
            f'<p class="meta">Generated {stamp} by <code>search report</code> (Optuna {optuna.__version__}). '
            f"Figures: PNG and PDF in figures/; tables: Markdown and LaTeX (booktabs) in tables/.</p>"
            f"<nav><ol>{''.join(toc)}</ol></nav>{''.join(body)}</body></html>\n")
