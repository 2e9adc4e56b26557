"""The final runs of a report, in groups: each `--run` of `search report` is a group, never pooled with another.

A group is a `search train` folder (one run) or a `search train --seeds` folder (a run per seed-S subfolder).
Its label is the folder's name, or LABEL in `--run LABEL=DIR`. Every figure and table shows the groups side by
side; with two or more, the comparison section sets each group against the first (the baseline):

- the difference of the means of test ACC and AUC with Welch's t interval at 95% over the runs' values
  (search/results/compare.py says why Welch), or, where a group has a single run, plainly no interval;
- McNemar's exact test on the per-image test results of each group's best run (by validation accuracy) against
  the baseline's, from the runs' per-image test predictions (test_predictions.csv, which `search train` writes
  for single-label tasks: each test image's class and predicted class, in the split's order). A run without
  them gets a note.

Runs on different datasets are refused: one line, nothing written.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from search.errors import SearchError
from search.hpo.trial_figures import confusion_figure, history_figure
from search.results import published
from search.results.compare import LEVEL, Difference, McNemar, mcnemar, welch
from search.results.run_figures import (
    confusion_groups_figure,
    gap_figure,
    group_colour,
    groups_metrics_figure,
    per_class_groups_figure,
)
from search.results.sections import FigureItem, Note, Section
from search.results.tables import Table
from search.results.tables import pm as _pm
from search.train import predictions
from search.train.data import class_names, is_multi_label


@dataclass
class Run:
    label: str  # the group's label, and the seed folder's name where the group has several runs
    folder: Path
    metrics: dict[str, Any]


@dataclass
class Group:
    label: str
    folder: Path
    runs: list[Run]

    def values(self, key: str) -> list[float]:
        return [float(r.metrics.get(key, math.nan)) for r in self.runs]

    @property
    def seed_ensemble(self) -> dict[str, Any] | None:
        """The seed ensemble `search train --seeds` recorded in the group's summary.json (None: none there)."""
        try:
            e = json.loads((self.folder / "summary.json").read_text()).get("ensemble")
        except (OSError, ValueError, AttributeError):
            return None
        return e if isinstance(e, dict) and len(self.runs) > 1 else None

    @property
    def dataset(self) -> str:
        return str(self.runs[0].metrics.get("dataset", "?"))

    @property
    def architectures(self) -> str:
        return " / ".join(sorted({str(r.metrics.get("architecture", "?")) for r in self.runs}))

    @property
    def n(self) -> str:
        return f"{len(self.runs)} run{'s' if len(self.runs) > 1 else ''}"


def parse_run(spec: str | Path) -> tuple[str, Path]:
    """`--run DIR` or `--run LABEL=DIR` -> (label, folder). A folder whose own name holds '=' is taken whole."""
    text = str(spec)
    label, sep, rest = text.partition("=")
    if sep and not Path(text).exists():
        if not label.strip() or not rest:
            raise SearchError(f"--run {text}: write LABEL=DIR with both parts, e.g. --run searched=runs/final")
        folder = Path(rest)
    else:
        label, folder = "", Path(text)
    if not folder.is_dir():
        raise SearchError(f"--run {text}: {folder} is not a folder; pass a folder that `search train` wrote "
                          f"(--out), a `search train --seeds` folder, or LABEL=DIR")
    return label.strip() or folder.resolve().name, folder


def load_groups(specs: Iterable[str | Path]) -> list[Group]:
    """Each `--run` as a group of runs; refuses duplicate labels and runs on different datasets (one line)."""
    groups: list[Group] = []
    for spec in specs:
        label, folder = parse_run(spec)
        if any(g.label == label for g in groups):
            raise SearchError(f"two --run groups are labelled '{label}'; name them apart with --run LABEL=DIR")
        groups.append(Group(label, folder, _load_runs(folder, label)))
    for g in groups:
        datasets = sorted({str(r.metrics.get("dataset", "?")) for r in g.runs})
        if len(datasets) > 1:
            raise SearchError(f"--run {g.label} holds runs on different datasets ({', '.join(datasets)}); "
                              f"report the runs of one dataset at a time")
    if len({g.dataset for g in groups}) > 1:
        pairs = ", ".join(f"{g.label} ({g.dataset})" for g in groups)
        raise SearchError(f"the --run groups trained on different datasets: {pairs}; a report compares runs of one "
                          f"dataset: report each dataset on its own")
    return groups


def _load_runs(d: Path, label: str) -> list[Run]:
    if (d / "metrics.json").is_file():
        found = [d]
    else:
        found = sorted((p.parent for p in d.glob("*/metrics.json")), key=lambda p: _natural(p.name))
    if not found:
        raise SearchError(f"--run {d}: no metrics.json there nor in its subfolders; pass a folder that "
                          f"`search train` wrote (--out), or a `search train --seeds` folder")
    runs = []
    for folder in found:
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SearchError(f"{folder / 'metrics.json'} cannot be read: {err}") from None
        # `search train` writes it beside metrics.json for single-label tasks: each test image's class and prediction
        path = folder / "test_predictions.csv"  # with or without the class probabilities (older runs)
        if path.is_file() and "test_predictions" not in metrics:
            read = predictions.read_test(path)
            if read.predictions is not None:  # a multi-label run's file has none: no single class per image
                metrics["test_labels"] = read.labels.tolist()
                metrics["test_predictions"] = read.predictions.tolist()
        runs.append(Run(label if folder == d else f"{label}/{folder.name}", folder, metrics))
    return runs


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# --- the groups side by side ----------------------------------------------------------------------------------


def runs_section(groups: list[Group], study_dataset: str | None) -> Section:
    dataset = groups[0].dataset
    runs = [r for g in groups for r in g.runs]
    several = len(groups) > 1
    what = ", ".join(f"<b>{html.escape(g.label)}</b> ({g.n} of {html.escape(g.architectures)})" for g in groups)
    intro = (f"Final runs on <b>{html.escape(dataset)}</b> (`search train`){', a group per --run' if several else ''}"
             f": {what}. Each run keeps the epoch with the best validation metric and is evaluated once on the test "
             f"split." + (" Each group is shown on its own, in its own colour; the first is the baseline of the "
                          "comparison below." if several else ""))
    if study_dataset and study_dataset != dataset:
        intro += (f" <b>Note:</b> the study searched on {html.escape(study_dataset)}, these runs are on "
                  f"{html.escape(dataset)}.")
    s = Section("final", "Final runs", intro)
    title = ", ".join(f"{g.label} ({g.architectures})" for g in groups) if several else groups[0].architectures
    s.items.append(FigureItem(
        "training_curves", "Training curves",
        "Training and validation loss (left) and validation accuracy and AUC (right) per epoch"
        + (", one colour per group" if several else "") + "; the star marks the epoch whose weights were kept "
        "and tested.",
        history_figure([(r.label, r.metrics.get("history", [])) for r in runs], f"Training curves: {title} on "
                       f"{dataset}", kept={r.label: r.metrics.get("best_epoch") for r in runs},
                       groups=[g.label for g in groups for _ in g.runs] if several else None)))
    s.items += _class_items(groups, dataset)
    s.items += _test_items(groups, dataset)
    s.items += _gap_items(groups)
    return s


def _class_items(groups: list[Group], dataset: str) -> list[FigureItem | Table | Note]:
    items: list[FigureItem | Table | Note] = []
    colour = {g.label: group_colour(i) for i, g in enumerate(groups)}  # a group's colour in every figure
    multi_label = is_multi_label(str(groups[0].runs[0].metrics.get("task", "")))
    with_classes = [(g, [r for r in g.runs if r.metrics.get("test_per_class_acc") is not None]) for g in groups]
    with_classes = [(g, rs) for g, rs in with_classes if rs]
    k = len(with_classes[0][1][0].metrics["test_per_class_acc"]) if with_classes else 0
    names = class_names(dataset, k)
    panels = [(g.label, [r.metrics["test_confusion"] for r in rs if r.metrics.get("test_confusion")])
              for g, rs in with_classes]
    panels = [(label, ms) for label, ms in panels if ms]
    missing = [g.label for g in groups if g.label not in {label for label, _ in panels}]
    if panels and len(groups) == 1:
        ms = panels[0][1]
        mean_of = f"mean of {len(ms)} runs" if len(ms) > 1 else "counts in brackets"
        items.append(FigureItem(
            "confusion_matrix", "Test confusion matrix",
            f"Rows: true class, columns: predicted class; each cell is the % of the row's test images ({mean_of}); "
            f"blank cells: no image.",
            confusion_figure(ms, names, f"Test confusion matrix, % of each true class ({mean_of})")))
    elif panels:
        items.append(FigureItem(
            "confusion_matrix", "Test confusion matrix of each group",
            "One panel per group. Rows: true class, columns: predicted class; each cell is the % of the row's test "
            "images (the mean over the group's runs; counts in brackets for a group of one run); blank cells: no "
            "image." + (f" No matrix for {', '.join(missing)} (see below)." if missing else ""),
            confusion_groups_figure(panels, names, "Test confusion matrix, % of each true class, per group",
                                    [colour[label] for label, _ in panels])))
    if multi_label:
        items.append(Note("Test confusion matrix", "Left out: a multi-label task has no single confusion matrix; see "
                                                   "the per-class (per-label) accuracy."))
    elif missing:
        items.append(Note("Test confusion matrix", f"Left out for {', '.join(missing)}: the runs' metrics.json has "
                                                   f"no test confusion matrix (written by an older `search train`); "
                                                   f"train again."))
    if not with_classes:
        return items
    counts = with_classes[0][1][0].metrics.get("test_class_counts") or [0] * k
    accs = [(g.label, [r.metrics["test_per_class_acc"] for r in rs], _mean([r.metrics["test_acc"] for r in rs]))
            for g, rs in with_classes]
    several = any(len(a) > 1 for _, a, _ in accs)
    items.append(FigureItem(
        "per_class_accuracy", "Per-class test accuracy",
        ("Accuracy of each label at threshold 0.5" if multi_label else
         "Share of each class's test images predicted as that class (its recall)")
        + ("; one bar per group, in its colour" if len(accs) > 1 else "")
        + ("; bars: the mean of a group's runs, whiskers: ± one standard deviation, dots: each run." if several
           else "."),
        per_class_groups_figure(names, accs, counts, multi_label, [colour[label] for label, _, _ in accs])))
    named = names != [str(i) for i in range(k)]  # a Name column only where classes have names
    heads = [label for label, _, _ in accs] if len(accs) > 1 else ["Accuracy"]
    items.append(Table(
        "per_class_accuracy", "Per-class test accuracy" + (" (mean ± sd over runs)" if several else "")
        + (" per group" if len(accs) > 1 else ""),
        ["Class", *(["Name"] if named else []), "Test images" if not multi_label else "Positives", *heads],
        [[str(i), *([names[i]] if named else []), str(counts[i]), *(_pm([a[i] for a in runs]) for _, runs, _ in accs)]
         for i in range(k)],
        ("rlr" if named else "rr") + "r" * len(heads),
        footer=[["all", *([""] if named else []), str(sum(counts)) if not multi_label else "",
                 *(_pm([r.metrics["test_acc"] for r in rs]) for _, rs in with_classes)]]))
    return items


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _test_items(groups: list[Group], dataset: str) -> list[FigureItem | Table | Note]:
    several = len(groups) > 1
    runs = [r for g in groups for r in g.runs]
    footer = [[(f"{g.label}: " if several else "") + ("mean ± sd" if len(g.runs) > 1 else "mean")
               + (f" (n = {len(g.runs)})" if several else ""), "", "", "", _pm(g.values("val_acc"), 4),
               _pm(g.values("test_acc"), 4), _pm(g.values("test_auc"), 4)] for g in groups]
    for i, g in reversed(list(enumerate(groups))):  # each group's seed ensemble below its mean
        e = g.seed_ensemble
        if e is not None:
            footer.insert(i + 1, [(f"{g.label}: " if several else "") + f"seed ensemble ({e['members']} runs)", "",
                                  "", "", "", f"{e['test_acc']:.4f}", f"{e['test_auc']:.4f}"])
    items: list[FigureItem | Table | Note] = [Table(
        "test_metrics", "Test accuracy and AUC of each run",
        ["Run", "Architecture", "Seed", "Kept epoch", "Val ACC", "Test ACC", "Test AUC"],
        [[r.label, str(r.metrics.get("architecture", "?")), str(r.metrics.get("seed", "")),
          _kept(r.metrics),
          f"{r.metrics.get('val_acc', math.nan):.4f}", f"{r.metrics['test_acc']:.4f}",
          f"{r.metrics['test_auc']:.4f}"] for r in runs], "llrrrrr", footer=footer,
        note=("sd: sample standard deviation (n - 1) over a group's runs." if any(len(g.runs) > 1 for g in groups)
              else "") + (" Seed ensemble: the mean of the runs' test probabilities (summary.json)."
                          if any(g.seed_ensemble for g in groups) else ""))]
    known = published.published(dataset)
    several_runs = any(len(g.runs) > 1 for g in groups)
    items.append(FigureItem(
        "test_metrics", "Test ACC and AUC",
        ("Each group's runs (dots) and their mean ± sd (diamond), a row per group"
         if several_runs else "Each group's test accuracy and AUC, a row per group" if several else
         "The run's test accuracy and AUC")
        + (f", beside the published results of {published.SOURCE} (grey)." if known else
           f". No published MedMNIST v2 results are kept for {dataset}."),
        groups_metrics_figure([(f"{g.label}: {g.architectures} (n = {len(g.runs)})", g.values("test_acc"),
                              g.values("test_auc")) for g in groups], known)))
    if known:
        items.append(Table(
            "benchmark", f"Test ACC and AUC on {dataset} beside {published.SOURCE}",
            ["Method", "ACC", "AUC"], [[m, f"{v[1]:.3f}", f"{v[0]:.3f}"] for m, v in known.items()], "lrr",
            footer=[[(f"{g.label}: " if several else "") + f"{g.architectures}, this work ({g.n})",
                     _pm(g.values("test_acc")), _pm(g.values("test_auc"))] for g in groups],
            note=f"Published values: {published.CITATION}"))
    else:
        items.append(Note("Published benchmark", f"No published MedMNIST v2 values are kept for '{dataset}' "
                                                 f"(search/results/published.py lists: "
                                                 f"{', '.join(published.MEDMNIST_V2)})."))
    return items


def _kept(m: dict[str, Any]) -> str:
    if m.get("outcome") == "ensemble":  # an ensemble's members each kept their own epoch
        return "ensemble"
    return f"{m.get('best_epoch', '?')} of {m.get('epochs', '?')}"


def _gap(run: Run, metric: str) -> float:
    """Validation minus test of ``metric`` (acc, auc) at the run's kept epoch; NaN where either is missing."""
    return float(run.metrics.get(f"val_{metric}", math.nan)) - float(run.metrics.get(f"test_{metric}", math.nan))


def _gap_items(groups: list[Group]) -> list[FigureItem | Table | Note]:
    """How far each run's validation value flatters it: the selection's bias on a small validation split."""
    several = len(groups) > 1
    cell = lambda v: "n/a" if math.isnan(v) else f"{v:+.4f}"  # noqa: E731
    value = lambda r, key: "n/a" if math.isnan(float(r.metrics.get(key, math.nan))) else f"{r.metrics[key]:.4f}"  # noqa: E731
    rows = [[r.label, _kept_by(r.metrics), value(r, "val_acc"), value(r, "test_acc"), cell(_gap(r, "acc")),
             value(r, "val_auc"), value(r, "test_auc"), cell(_gap(r, "auc"))] for g in groups for r in g.runs]
    footer = [[(f"{g.label}: " if several else "") + ("mean ± sd" if len(g.runs) > 1 else "mean"), "",
               _pm(g.values("val_acc"), 4), _pm(g.values("test_acc"), 4),
               _signed_pm([_gap(r, "acc") for r in g.runs]), _pm(g.values("val_auc"), 4),
               _pm(g.values("test_auc"), 4), _signed_pm([_gap(r, "auc") for r in g.runs])] for g in groups]
    return [Table("val_test_gap", "Validation-test gap of each run",
                  ["Run", "Kept by", "Val ACC", "Test ACC", "Gap ACC", "Val AUC", "Test AUC", "Gap AUC"], rows,
                  "llrrrrrr", footer=footer,
                  note="Gap: validation minus test, at the kept epoch (picked by the 'Kept by' metric); > 0: the "
                       "validation split flatters the run, as it does the winner of a search that chose on it."),
            FigureItem("val_test_gap", "Validation-test gap",
                       "Validation minus test accuracy (left) and AUC (right) of each run's kept epoch, a row per "
                       "group: each run a dot, the group's mean ± sd a diamond; the dashed line is no gap.",
                       gap_figure([(f"{g.label} (n = {len(g.runs)})", [_gap(r, "acc") for r in g.runs],
                                    [_gap(r, "auc") for r in g.runs]) for g in groups]))]


def _kept_by(m: dict[str, Any]) -> str:
    """The metric that picked the kept epoch (older runs: val_acc, the only one then); an ensemble's members each
    kept their own."""
    return "ensemble" if m.get("outcome") == "ensemble" else str(m.get("keep_epoch_by", "val_acc"))


def _signed_pm(values: list[float]) -> str:
    text = _pm(values, 4)
    return text if text == "n/a" or text.startswith("-") else "+" + text


# --- the comparison with the baseline -------------------------------------------------------------------------

WELCH_WHY = (f"Each difference is the group's mean minus the baseline's, with Welch's t interval at {LEVEL:.0%} "
             "over the runs' values: with a few seeds per group the t distribution (not the normal) sets the "
             "width, and Welch's form does not assume that two configurations vary alike from seed to seed. A "
             "group of a single run has no spread, so no interval can be computed for it.")


def comparison_section(groups: list[Group]) -> Section:
    """Each group against the first (the baseline): Welch intervals of test ACC and AUC, and McNemar's test."""
    base = groups[0]
    diffs = {g.label: {key: welch(g.values(key), base.values(key)) for key in ("test_acc", "test_auc")}
             for g in groups[1:]}
    tests, why_not = _mcnemar_tests(groups)
    readings = []
    for g in groups[1:]:
        for key, name in (("test_acc", "test ACC"), ("test_auc", "test AUC")):
            d = diffs[g.label][key]
            df = f", Welch df {d.df:.1f}" if d.df is not None else ""
            interval = f" [{d.low:+.4f}, {d.high:+.4f}]" if d.has_interval else ""
            readings.append(f"{html.escape(g.label)} − {html.escape(base.label)}, {name}: {_signed(d.estimate)}"
                            f"{interval} ({d.n} vs {d.n_baseline} runs{df}): {html.escape(d.verdict())}.")
    intro = (f"Each group against the baseline, <b>{html.escape(base.label)}</b> (the first --run). "
             f"{html.escape(WELCH_WHY)}<br>" + "<br>".join(readings))
    s = Section("comparison", "Comparison with the baseline", intro)
    columns = ["Group", "Runs", "Test ACC", "Δ ACC [95% CI]", "Test AUC", "Δ AUC [95% CI]"]
    rows = [[f"{base.label} (baseline)", str(len(base.runs)), _pm(base.values("test_acc"), 4), "baseline",
             _pm(base.values("test_auc"), 4), "baseline"]]
    for g in groups[1:]:
        rows.append([g.label, str(len(g.runs)), _pm(g.values("test_acc"), 4),
                     _signed(diffs[g.label]["test_acc"].estimate) + _interval(diffs[g.label]["test_acc"]),
                     _pm(g.values("test_auc"), 4),
                     _signed(diffs[g.label]["test_auc"].estimate) + _interval(diffs[g.label]["test_auc"])])
    note = ("Δ: the group's mean minus the baseline's; 95% CI: Welch's t interval over the runs' values; an "
            "interval that includes 0: no difference shown at 95%; n = 1: no interval (one run has no spread).")
    if any(tests.values()):
        columns += ["McNemar b / c", "McNemar p"]
        rows[0] += ["", ""]
        for row, g in zip(rows[1:], groups[1:]):
            t = tests[g.label]
            row += [f"{t.only_first} / {t.only_second}", _p(t.p)] if t else ["n/a", "n/a"]
        note += (" McNemar: exact two-sided binomial test on the test images of each group's best run (by "
                 "validation accuracy) against the baseline's best; b: images only the group's run gets right, "
                 "c: only the baseline's.")
    s.items.append(Table("comparison", f"Each group against the baseline ({base.label}): test ACC and AUC",
                         columns, rows, "lr" + "r" * (len(columns) - 2), note=note))
    if why_not:
        s.items.append(Note("McNemar's test", "Left out for " + "; ".join(why_not) + "."))
    return s


def _mcnemar_tests(groups: list[Group]) -> tuple[dict[str, McNemar | None], list[str]]:
    """group label -> McNemar's test of its best run against the baseline's best (None where it cannot be run),
    and the reasons where it cannot."""
    results: dict[str, McNemar | None] = {g.label: None for g in groups[1:]}
    if not any(_has_predictions(r) for g in groups for r in g.runs):
        return results, ["every group: no run has per-image test predictions (test_predictions.csv, which "
                         "`search train` writes for single-label tasks)"]
    best = {g.label: max(g.runs, key=lambda r: _finite(r.metrics.get("val_acc"))) for g in groups}
    base = groups[0]
    why: list[str] = []
    for g in groups[1:]:
        a, b = best[g.label], best[base.label]
        missing = [r.label for r in (a, b) if not _has_predictions(r)]
        if missing:
            why.append(f"{g.label}: its best run or the baseline's ({' and '.join(missing)}) has no per-image test "
                       f"predictions (test_predictions.csv)")
        elif a.metrics["test_labels"] != b.metrics["test_labels"]:
            why.append(f"{g.label}: its best run ({a.label}) and the baseline's ({b.label}) were tested on "
                       f"different test images (their test labels differ)")
        else:
            truth = a.metrics["test_labels"]
            results[g.label] = mcnemar([p == y for p, y in zip(a.metrics["test_predictions"], truth)],
                                       [p == y for p, y in zip(b.metrics["test_predictions"], truth)])
    return results, why


def _has_predictions(r: Run) -> bool:
    return bool(r.metrics.get("test_predictions")) and bool(r.metrics.get("test_labels"))


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else -math.inf


def _signed(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.4f}"


def _interval(d: Difference) -> str:
    if d.has_interval:
        return f" [{d.low:+.4f}, {d.high:+.4f}]"
    return " (n = 1: no interval)" if "n = 1" in d.why_none else " (no interval)"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else "< 0.0001"
