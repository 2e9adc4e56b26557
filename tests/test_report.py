"""`search report`, `search train --seeds` and `search status --csv`, on one real small search.

The search, the two seeded final runs and the report are real `search` processes on a real SQLite file with
scikit-learn's digits; they run once per session (tests/test_artifacts.py reads the same search).
"""
from __future__ import annotations

import csv
import html
import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from search.cli import main
from search.results import published, report
from search.train import config, engine
from tests.support.data import write_medmnist_npz
from tests.support.studies import Searched

STUDY_FIGURES = ("optimisation_history", "importances", "marginal_effects", "parallel_coordinates",
                 "learning_curves", "best_per_architecture", "trial_states", "pruning_savings")
RUN_FIGURES = ("training_curves", "confusion_matrix", "per_class_accuracy", "test_metrics", "val_test_gap")
TABLES = ("best_per_architecture", "trial_states", "pruning_savings", "top_trials", "trials",
          "per_class_accuracy", "test_metrics", "val_test_gap")



# --- search train --seeds -------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_seeds_keep_each_run_in_its_folder_and_report_mean_and_sd(searched):
    final = searched.root / "final"
    runs = [json.loads((final / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert [m["seed"] for m in runs] == [0, 1]
    assert [config.load(final / f"seed-{s}" / "config.yaml").seed for s in (0, 1)] == [0, 1]
    assert all((final / f"seed-{s}" / "model.pt").is_file() for s in (0, 1))
    summary = json.loads((final / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["runs"] == ["seed-0", "seed-1"]
    for key in ("test_acc", "test_auc"):
        values = [m[key] for m in runs]
        assert summary[key]["values"] == values
        assert summary[key]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary[key]["sd"] == pytest.approx(statistics.stdev(values))
    last = searched.train_stdout.strip().splitlines()[-1]
    assert last.startswith("digits simple_cnn_v1, 2 seeds: test_acc ") and " ± " in last
    assert f"{summary['test_acc']['mean']:.4f}" in last


@pytest.mark.e2e
def test_final_runs_record_the_test_confusion_matrix_of_the_same_pass(searched):
    m = json.loads((searched.root / "final" / "seed-0" / "metrics.json").read_text())
    cm = m["test_confusion"]
    assert len(cm) == 10 and all(len(row) == 10 for row in cm)
    assert sum(map(sum, cm)) == 269  # the digits test split
    assert [sum(row) for row in cm] == m["test_class_counts"]
    # the matrix comes from the very scores test_acc was computed from
    assert sum(cm[i][i] for i in range(10)) / 269 == pytest.approx(m["test_acc"])
    assert m["test_per_class_acc"] == pytest.approx([cm[i][i] / sum(cm[i]) for i in range(10)])
    # ...and so do the per-image predictions that `search report`'s paired test (McNemar) reads
    (run,) = report.load_groups([searched.root / "final" / "seed-0"])[0].runs
    labels, predictions = run.metrics["test_labels"], run.metrics["test_predictions"]
    assert len(labels) == len(predictions) == 269 and [labels.count(k) for k in range(10)] == m["test_class_counts"]
    assert sum(y == p for y, p in zip(labels, predictions)) / 269 == pytest.approx(m["test_acc"])


@pytest.mark.e2e
def test_seeds_refuse_a_folder_with_finished_runs(searched, monkeypatch):
    monkeypatch.chdir(searched.root)
    before = (searched.root / "final" / "summary.json").read_text()
    result = CliRunner().invoke(main, ["train", "final.yaml", "--seeds", "2", "--out", "final"])
    assert result.exit_code == 2 and "already holds a finished run" in result.output
    assert (searched.root / "final" / "summary.json").read_text() == before


# --- search report: files ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_every_figure_is_a_png_and_a_pdf_and_every_table_markdown_and_latex(searched):
    figures = searched.report / "figures"
    for name in STUDY_FIGURES + RUN_FIGURES:
        png, pdf = (figures / f"{name}.png").read_bytes(), (figures / f"{name}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
        assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-1024:], name
        assert b"/FontFile2" in pdf, name  # TrueType fonts embedded (pdf.fonttype 42), as journals ask
    for name in TABLES:
        assert (searched.report / "tables" / f"{name}.md").read_text().startswith("Table: ")
        assert "\\begin{tabular}" in (searched.report / "tables" / f"{name}.tex").read_text()
    # digits has no published MedMNIST v2 values: no benchmark table, and the page says so
    assert not (searched.report / "tables" / "benchmark.tex").exists()
    assert "No published MedMNIST v2 values are kept for &#x27;digits&#x27;" in _page(searched)
    assert "Citing the published values" not in _page(searched)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.fetched: list[str] = []  # what a browser loads by itself: scripts, stylesheets, images, frames

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag in ("script", "link", "img", "iframe", "source", "video", "audio"):
            self.fetched.append(a.get("src") or a.get("href") or "")


def _page(s: Searched) -> str:
    return (s.report / "index.html").read_text()


@pytest.mark.e2e
def test_the_page_shows_every_figure_and_table_and_fetches_nothing(searched):
    page = _page(searched)
    refs = _Refs()
    refs.feed(page)
    assert sorted(refs.images) == sorted(f"figures/{n}.png" for n in STUDY_FIGURES + RUN_FIGURES)
    for link in refs.links:
        if not link.startswith(("#", "http")):
            assert (searched.report / link).is_file(), link
    assert {f"figures/{n}.pdf" for n in STUDY_FIGURES + RUN_FIGURES} <= set(refs.links)
    assert {f"tables/{n}.{ext}" for n in TABLES for ext in ("md", "tex")} <= set(refs.links)
    assert "trials.csv" in refs.links
    assert all(not re.match(r"(https?:)?//", ref) for ref in refs.fetched), refs.fetched
    assert "<script" not in page and "@import" not in page and "url(" not in page


# --- search report: table contents ---------------------------------------------------------------------------


def body_rows(tex: str) -> tuple[list[list[str]], list[list[str]]]:
    """(rows, footer rows) of a booktabs table: between the header's \\midrule and \\bottomrule."""
    lines = [line.strip() for line in tex.splitlines()]
    assert lines.count(r"\toprule") == 1 and lines.count(r"\bottomrule") == 1 and r"\midrule" in lines
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    split = body.index(r"\midrule") if r"\midrule" in body else len(body)
    cells = lambda part: [line.removesuffix(r"\\").strip().split(" & ") for line in part]  # noqa: E731
    return cells(body[:split]), cells(body[split + 1:])


def tex(s: Searched, name: str) -> str:
    return (s.report / "tables" / f"{name}.tex").read_text()


@pytest.mark.e2e
def test_latex_tables_have_one_row_per_item(searched):
    trials = searched.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    archs = {t.params["architecture"] for t in complete}
    rows, _ = body_rows(tex(searched, "best_per_architecture"))
    assert sorted(r[0].replace(r"\_", "_") for r in rows) == sorted(archs)
    best = max(complete, key=lambda t: t.value)
    assert rows[0][4] == f"{best.value:.4f}" and rows[0][5] == str(best.number)

    rows, footer = body_rows(tex(searched, "trial_states"))
    assert [r[0] for r in rows] == ["complete", "pruned", "fail", "running", "waiting"]
    assert int(rows[0][1]) == len(complete) and footer == [["total", str(len(trials))]]

    rows, footer = body_rows(tex(searched, "per_class_accuracy"))
    assert [r[0] for r in rows] == [str(i) for i in range(10)] and footer[0][0] == "all"
    assert all(r"$\pm$" in r[-1] for r in rows)  # two runs: mean ± sd

    rows, footer = body_rows(tex(searched, "test_metrics"))
    assert [r[0] for r in rows] == ["final/seed-0", "final/seed-1"] and footer[0][0] == r"mean $\pm$ sd"
    ensemble = json.loads((searched.root / "final" / "summary.json").read_text())["ensemble"]  # below the mean
    assert footer[1][0] == "seed ensemble (2 runs)" and footer[1][5] == f"{ensemble['test_acc']:.4f}"

    rows, footer = body_rows(tex(searched, "val_test_gap"))  # validation minus test, each run and the group
    gaps = []
    for row, seed in zip(rows, (0, 1)):
        m = json.loads((searched.root / "final" / f"seed-{seed}" / "metrics.json").read_text())
        gaps.append(m["val_acc"] - m["test_acc"])
        assert row[0] == f"final/seed-{seed}" and row[1] == r"val\_acc"
        assert float(row[4]) == pytest.approx(gaps[-1], abs=1e-4)
        assert float(row[7]) == pytest.approx(m["val_auc"] - m["test_auc"], abs=1e-4)
    assert len(rows) == 2 and footer[0][4].startswith(f"{statistics.fmean(gaps):+.4f}")

    rows, _ = body_rows(tex(searched, "trials"))
    assert [int(r[0]) for r in rows] == [t.number for t in trials]

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    saved = sum(2 - t.user_attrs["epochs_run"] for t in pruned)
    (row,), _ = body_rows(tex(searched, "pruning_savings"))
    assert row[:5] == [str(len(trials)), str(len(pruned)), str(2 * len(trials)), str(2 * len(trials) - saved),
                       str(saved)]

    md = (searched.report / "tables" / "best_per_architecture.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith("| simple_cnn")]) == len(archs)


@pytest.mark.e2e
def test_status_writes_every_trial_to_csv(searched, monkeypatch):
    monkeypatch.chdir(searched.root)  # in-process: a fourth process start would cost more than the test
    result = CliRunner().invoke(main, ["status", "--study", "tiny", "--csv", "trials.csv"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{len(searched.trials)} trials -> trials.csv")
    with (searched.root / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["number", "state", "value"] and list(rows[0])[-3:] == ["epochs_run", "seconds",
                                                                                       "reason"]
    assert {"architecture", "lr", "dropout", "optimizer", "momentum"} <= set(rows[0])
    assert len(rows) == len(searched.trials)
    for row, t in zip(rows, searched.trials):
        assert int(row["number"]) == t.number and row["state"] == t.state.name.lower()
        assert (float(row["value"]) == t.value) if t.value is not None else row["value"] == ""
        assert int(row["epochs_run"]) == t.user_attrs["epochs_run"] and float(row["seconds"]) > 0
        assert row["momentum"] == (str(t.params["momentum"]) if "momentum" in t.params else "")
    assert (searched.report / "trials.csv").read_text() == (searched.root / "trials.csv").read_text()


# --- degrading, and the published benchmark ------------------------------------------------------------------


def _study_with(tmp_path: Path, values: list[float]) -> optuna.Study:
    study = optuna.create_study(study_name="few", storage=f"sqlite:///{tmp_path / 'few.db'}", direction="maximize")
    study.set_user_attr("metric", "val_acc")
    study.set_user_attr("dataset", "digits")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for i, v in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 10 ** -(2 + i)}, distributions=dist, value=v, intermediate_values={1: v / 2, 2: v},
            user_attrs={"config": {"architecture": "simple_cnn_v1", "epochs": 2}, "epochs_run": 2}))
    return study


def test_too_few_trials_leave_figures_out_with_a_note(tmp_path):
    out = tmp_path / "out"
    report.write_report(_study_with(tmp_path, [0.9]), [], out)
    page = (out / "index.html").read_text()
    assert "importances need at least 2 complete trials; this study has 1" in page
    assert not (out / "figures" / "importances.png").exists()
    assert (out / "figures" / "optimisation_history.png").exists()
    assert "training_curves" not in page  # no --run: no final-run section
    empty = optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path / 'few.db'}")
    section, trials_table = report.study_section(empty)
    drawn = [item.name for item in section.items if isinstance(item, report.FigureItem)]
    notes = [item.title for item in section.items if isinstance(item, report.Note)]
    assert drawn == ["trial_states"] and trials_table.rows == []
    assert notes == ["Optimisation history", "Hyperparameter importances", "Marginal effects of the hyperparameters",
                     "Parallel coordinates", "Learning curves", "Best per architecture", "Epochs saved by pruning"]


def test_pathmnist_runs_are_tabled_beside_the_published_benchmark(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    cfg = config.TrainConfig(dataset="pathmnist", data_dir=str(tmp_path), architecture="simple_cnn_v1", epochs=1,
                             batch_size=32, device="cpu")
    engine.train(cfg, tmp_path / "run", progress=False)
    section = report.runs_section(report.load_groups([tmp_path / "run"]), "pathmnist")
    tables = {item.name: item for item in section.items if isinstance(item, report.Table)}
    rows, footer = body_rows(tables["benchmark"].latex())
    values = published.MEDMNIST_V2["pathmnist"]
    assert [r[0] for r in rows] == list(values) == list(published.METHODS)
    assert rows[0] == ["ResNet-18 (28)", "0.907", "0.983"]  # ACC, AUC as the paper prints them
    assert all([float(r[1]), float(r[2])] == [values[r[0]][1], values[r[0]][0]] for r in rows)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert footer == [["simple\\_cnn\\_v1, this work (1 run)", f"{m['test_acc']:.3f}", f"{m['test_auc']:.3f}"]]
    assert "doi:10.1038/s41597-022-01721-8" in tables["benchmark"].latex()
    rows, _ = body_rows(tables["per_class_accuracy"].latex())
    assert [r[1] for r in rows] == report.class_names("pathmnist", 9) and rows[0][1] == "adipose"
    assert "test_metrics" in [item.name for item in section.items if isinstance(item, report.FigureItem)]


@pytest.mark.e2e
def test_a_folder_without_runs_is_one_line_and_writes_nothing(searched, monkeypatch):
    monkeypatch.chdir(searched.root)
    (searched.root / "empty-run").mkdir()
    result = CliRunner().invoke(main, ["report", "--study", "tiny", "--run", "empty-run", "-o", "nothing"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "--run empty-run: no metrics.json there nor in its subfolders" in result.output
    assert not (searched.root / "nothing").exists()


# --- run groups: side by side, and compared with the first ---------------------------------------------------


def _metrics(searched: Searched) -> dict:
    """A real run's metrics.json (the fixture's `search train`), the template of the generated runs below."""
    return json.loads((searched.root / "final" / "seed-0" / "metrics.json").read_text())


def _group(folder: Path, template: dict, accs: list[float], aucs: list[float], **changes) -> Path:
    """A `search train` folder (one value) or a `--seeds` folder (seed-S/metrics.json each), as search train
    writes them, with the given test ACC and AUC; ``changes``: keys set in every run, or lists of one per run."""
    for i, (acc, auc) in enumerate(zip(accs, aucs)):
        run = folder if len(accs) == 1 else folder / f"seed-{i}"
        run.mkdir(parents=True)
        m = {**template, "seed": i, "test_acc": acc, "test_auc": auc}
        m.update({k: v[i] if isinstance(v, list) and len(v) == len(accs) and k != "test_labels" else v
                  for k, v in changes.items()})
        (run / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    return folder


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(difference, low, high) at 95%, from the textbook formulas; only the t quantile comes from scipy."""
    from scipy import stats

    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    return ma - mb, ma - mb - half, ma - mb + half


def _cell_numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[+-]\d\.\d+", cell)]


DEFAULT_AUC, SEARCHED_AUC = [0.950, 0.955, 0.960], [0.940, 0.990, 0.970]


@pytest.mark.e2e
def test_two_run_groups_get_rows_of_their_own_and_a_difference_with_a_welch_interval(searched, tmp_path):
    m = _metrics(searched)
    default = _group(tmp_path / "runs" / "default", m, [0.80, 0.82, 0.84], DEFAULT_AUC)
    final = _group(tmp_path / "runs" / "final", m, [0.85, 0.87, 0.89], SEARCHED_AUC, architecture="simple_cnn_v2")
    one = _group(tmp_path / "runs" / "one", m, [0.86], [0.96])  # a single run; its label: the folder's name
    # What write_report writes, without the seconds of saving every figure (the searched report covers that);
    # a study without trials keeps the search's section short.
    sections, _ = report.build_sections(optuna.create_study(study_name="none"),
                                        report.load_groups([f"default={default}", f"searched={final}", str(one)]))
    assert [s.id for s in sections] == ["search", "final", "comparison"]
    items = {item.name: item for s in sections for item in s.items if isinstance(item, report.Table)}

    rows, footer = body_rows(items["comparison"].latex())
    assert [r[0] for r in rows] == ["default (baseline)", "searched", "one"] and footer == []
    assert [r[1] for r in rows] == ["3", "3", "1"]
    # Equal spreads and sizes: Welch's df is 2 (n - 1) = 4, t(0.975, 4) = 2.7764 from a printed t table;
    # se = sqrt(2 * 0.02^2 / 3) = 0.01633: 0.05 ± 0.04534
    assert _cell_numbers(rows[1][3]) == pytest.approx([0.05, 0.05 - 0.045339, 0.05 + 0.045339], abs=1e-4)
    # Unequal spreads: the interval from the formulas by hand
    assert _cell_numbers(rows[1][5]) == pytest.approx(list(_welch_by_hand(SEARCHED_AUC, DEFAULT_AUC)), abs=1e-4)
    low, high = _cell_numbers(rows[1][5])[1:]
    assert low < 0 < high  # ...so the page must say that no difference is shown
    assert rows[2][3] == "+0.0400 (n = 1: no interval)" and rows[2][5] == "+0.0050 (n = 1: no interval)"
    assert r"$\Delta$ ACC [95\% CI]" in items["comparison"].latex()  # LaTeX without Unicode set-up
    assert items["comparison"].markdown().startswith("Table: Each group against the baseline (default)")
    text = html.unescape(sections[2].intro)  # the page's paragraph above the table
    assert "searched − default, test ACC: +0.0500 [+0.0047, +0.0953] (3 vs 3 runs, Welch df 4.0): higher than " \
           "the baseline at 95%" in text
    assert "no difference shown at 95% (the interval includes 0)" in text.split("searched − default, test AUC")[1]
    assert "one − default, test ACC: +0.0400 (1 vs 3 runs): no interval: the group has a single run (n = 1)" in text
    assert "Welch's t interval" in text and "few seeds" in text
    # no per-image predictions in these runs: McNemar is left out, and the page says why
    assert "McNemar" not in items["comparison"].latex()
    (note,) = [n for n in sections[2].items if isinstance(n, report.Note)]
    assert note.text.startswith("Left out for every group: no run has per-image test predictions")

    # every group on its own: a row per run, a footer line per group, a per-class column per group
    rows, footer = body_rows(items["test_metrics"].latex())
    assert [r[0] for r in rows] == [f"{g}/seed-{i}" for g in ("default", "searched") for i in range(3)] + ["one"]
    assert [f[0] for f in footer] == [r"default: mean $\pm$ sd (n = 3)", r"searched: mean $\pm$ sd (n = 3)",
                                      "one: mean (n = 1)"]
    assert footer[0][5] == r"0.8200 $\pm$ 0.0200" and footer[2][5] == "0.8600"
    assert items["per_class_accuracy"].columns[-3:] == ["default", "searched", "one"]

    figures = {i.name: i.figure for i in sections[1].items if isinstance(i, report.FigureItem)}
    panels = [ax for ax in figures["confusion_matrix"].axes if ax.images]
    assert [ax.get_title().split(" (")[0] for ax in panels] == ["default", "searched", "one"]
    legend = figures["training_curves"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["default", "searched", "one"]  # a colour per group
    assert len({line.get_color() for line in legend.get_lines()}) == 3


@pytest.mark.e2e
def test_mcnemar_compares_the_best_runs_per_image(searched, tmp_path):
    m = _metrics(searched)
    labels = [i % 10 for i in range(269)]
    right = lambda wrong: [(y + 1) % 10 if i in wrong else y for i, y in enumerate(labels)]  # noqa: E731
    all_wrong = right(set(range(269)))
    # the best runs by validation accuracy: seed-1 in each group. Only the group's gets images 0-7 right (b = 8),
    # only the baseline's 8 and 9 (c = 2); the other runs get every image wrong.
    base = _group(tmp_path / "base", m, [0.8, 0.8], [0.9, 0.9], val_acc=[0.5, 0.9], test_labels=labels,
                  test_predictions=[all_wrong, right(set(range(8)))])
    other = _group(tmp_path / "other", m, [0.8, 0.8], [0.9, 0.9], val_acc=[0.5, 0.9], test_labels=labels,
                   test_predictions=[all_wrong, right({8, 9})])
    section = report.comparison_section(report.load_groups([base, other]))
    (table,) = [item for item in section.items if isinstance(item, report.Table)]
    assert table.columns[-2:] == ["McNemar b / c", "McNemar p"]
    # exact two-sided: 2 P(X <= 2), X ~ Bin(10, 1/2) = 2 (1 + 10 + 45) / 1024 = 0.109375
    assert table.rows[1][-2:] == ["8 / 2", "0.109"]
    assert not [item for item in section.items if isinstance(item, report.Note)]


@pytest.mark.e2e
def test_groups_on_different_datasets_are_refused_in_one_line_and_nothing_is_written(searched, tmp_path,
                                                                                     monkeypatch):
    m = _metrics(searched)
    digits = _group(tmp_path / "digits-run", m, [0.8], [0.9])
    path = _group(tmp_path / "path-runs", m, [0.8, 0.8], [0.9, 0.9], dataset="pathmnist")
    monkeypatch.chdir(searched.root)
    result = CliRunner().invoke(main, ["report", "--study", "tiny", "--run", f"a={digits}", "--run", f"b={path}",
                                       "-o", str(tmp_path / "mixed")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "trained on different datasets: a (digits), b (pathmnist)" in result.output
    assert not (tmp_path / "mixed").exists()


@pytest.mark.e2e
def test_marginal_effects_have_one_panel_per_searched_parameter_beside_the_importances(searched, tmp_path):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{searched.root / 'search.db'}")
    section, _ = report.study_section(study)
    names = [item.name if isinstance(item, report.FigureItem) else item.title for item in section.items]
    assert names.index("marginal_effects") == names.index("importances") + 1
    fig = next(item.figure for item in section.items if getattr(item, "name", "") == "marginal_effects")
    finished = [t for t in searched.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    params = list(dict.fromkeys(n for t in finished for n in t.params))
    assert sorted(params) == ["architecture", "dropout", "lr", "momentum", "optimizer"]
    assert [ax.get_xlabel() for ax in fig.axes] == params  # one panel each, none empty
    for ax, name in zip(fig.axes, params):  # every finished trial that set the parameter, complete or pruned
        assert sum(len(c.get_offsets()) for c in ax.collections) == sum(name in t.params for t in finished)
    lr = fig.axes[params.index("lr")]  # a categorical parameter, numbers as categories
    assert lr.get_xscale() == "linear" and [t.get_text() for t in lr.get_xticklabels()] == ["1e-5", "0.003"]
    # a float sampled on a log scale gets a log axis
    log_fig = next(item.figure for item in report.study_section(_study_with(tmp_path, [0.9, 0.8]))[0].items
                   if getattr(item, "name", "") == "marginal_effects")
    assert [(ax.get_xlabel(), ax.get_xscale()) for ax in log_fig.axes] == [("lr (log scale)", "log")]
    assert (searched.report / "figures" / "marginal_effects.pdf").read_bytes().startswith(b"%PDF-")
