"""`search report`, `search train --seeds` and `search status --csv`, on one real small search.

The search, the two seeded final runs and the report are real `search` processes on a real SQLite file with
scikit-learn's digits; they run once per session (tests/test_artifacts.py reads the same search).
"""
from __future__ import annotations

import csv
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
from search.results import published as benchmarks
from search.results import report
from search.train import config, engine
from tests.helpers import Searched, write_medmnist_npz

STUDY_FIGURES = ("optimisation_history", "importances", "parallel_coordinates", "learning_curves",
                 "best_per_architecture", "trial_states", "pruning_savings")
RUN_FIGURES = ("training_curves", "confusion_matrix", "per_class_accuracy", "test_metrics")
TABLES = ("best_per_architecture", "trial_states", "pruning_savings", "top_trials", "trials",
          "per_class_accuracy", "test_metrics")



# --- search train --seeds -------------------------------------------------------------------------------------


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


def test_final_runs_record_the_test_confusion_matrix_of_the_same_pass(searched):
    m = json.loads((searched.root / "final" / "seed-0" / "metrics.json").read_text())
    cm = m["test_confusion"]
    assert len(cm) == 10 and all(len(row) == 10 for row in cm)
    assert sum(map(sum, cm)) == 269  # the digits test split
    assert [sum(row) for row in cm] == m["test_class_counts"]
    # the matrix comes from the very scores test_acc was computed from
    assert sum(cm[i][i] for i in range(10)) / 269 == pytest.approx(m["test_acc"])
    assert m["test_per_class_acc"] == pytest.approx([cm[i][i] / sum(cm[i]) for i in range(10)])


def test_seeds_refuse_a_folder_with_finished_runs(searched, monkeypatch):
    monkeypatch.chdir(searched.root)
    before = (searched.root / "final" / "summary.json").read_text()
    result = CliRunner().invoke(main, ["train", "final.yaml", "--seeds", "2", "--out", "final"])
    assert result.exit_code == 2 and "already holds a finished run" in result.output
    assert (searched.root / "final" / "summary.json").read_text() == before


# --- search report: files ------------------------------------------------------------------------------------


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

    rows, _ = body_rows(tex(searched, "trials"))
    assert [int(r[0]) for r in rows] == [t.number for t in trials]

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    saved = sum(2 - t.user_attrs["epochs_run"] for t in pruned)
    (row,), _ = body_rows(tex(searched, "pruning_savings"))
    assert row[:5] == [str(len(trials)), str(len(pruned)), str(2 * len(trials)), str(2 * len(trials) - saved),
                       str(saved)]

    md = (searched.report / "tables" / "best_per_architecture.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith("| simple_cnn")]) == len(archs)


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
    assert notes == ["Optimisation history", "Hyperparameter importances", "Parallel coordinates", "Learning curves",
                     "Best per architecture", "Epochs saved by pruning"]


def test_pathmnist_runs_are_tabled_beside_the_published_benchmark(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz", channels=3, classes=9)
    cfg = config.TrainConfig(dataset="pathmnist", data_dir=str(tmp_path), architecture="simple_cnn_v1", epochs=1,
                             batch_size=32, device="cpu")
    engine.train(cfg, tmp_path / "run", progress=False)
    section = report.runs_section(report.load_runs([tmp_path / "run"]), "pathmnist")
    tables = {item.name: item for item in section.items if isinstance(item, report.Table)}
    rows, footer = body_rows(tables["benchmark"].latex())
    published = benchmarks.MEDMNIST_V2["pathmnist"]
    assert [r[0] for r in rows] == list(published) == list(benchmarks.METHODS)
    assert rows[0] == ["ResNet-18 (28)", "0.907", "0.983"]  # ACC, AUC as the paper prints them
    assert all([float(r[1]), float(r[2])] == [published[r[0]][1], published[r[0]][0]] for r in rows)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert footer == [["simple\\_cnn\\_v1, this work (1 run)", f"{m['test_acc']:.3f}", f"{m['test_auc']:.3f}"]]
    assert "doi:10.1038/s41597-022-01721-8" in tables["benchmark"].latex()
    rows, _ = body_rows(tables["per_class_accuracy"].latex())
    assert [r[1] for r in rows] == report.class_names("pathmnist", 9) and rows[0][1] == "adipose"
    assert "test_metrics" in [item.name for item in section.items if isinstance(item, report.FigureItem)]


def test_a_folder_without_runs_is_one_line_and_writes_nothing(searched, monkeypatch):
    monkeypatch.chdir(searched.root)
    (searched.root / "empty-run").mkdir()
    result = CliRunner().invoke(main, ["report", "--study", "tiny", "--run", "empty-run", "-o", "nothing"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "--run empty-run: no metrics.json there nor in its subfolders" in result.output
    assert not (searched.root / "nothing").exists()
