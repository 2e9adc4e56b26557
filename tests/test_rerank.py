"""`search export --rerank K --seeds N`: the K best trials of a real search retrained with N seeds each, ranked by the
mean validation metric, the winner exported as a TrainConfig file that `search train` runs; its errors are one line
with nothing written; Ctrl-C keeps the trial folders that finished."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from search.cli import main
from search.results import report
from tests.support.cli import run
from tests.support.signals import Interruptible
from tests.support.store import trials_of
from tests.support.studies import ONE_LR, write_study
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e  # every test here starts real processes


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    """Four trials of one epoch on the bundled digits, all complete (no pruner), so that K can be up to 4."""
    root = tmp_path_factory.mktemp("rerank")
    write_study(root, "rr", epochs=1, trials=4,
                space={**ONE_LR, "dropout": {"type": "float", "low": 0.0, "high": 0.5}})
    start = run(["start", "--study", "rr.yaml", "--workers", "1"], root)
    assert start.returncode == 0, start.stdout + start.stderr
    assert [t.state for t in trials_of(root / "search.db", "rr")] == [TrialState.COMPLETE] * 4
    (root / "start.txt").write_text(start.stdout)
    return root


def test_a_finished_search_ends_with_its_summary_and_the_next_command(study_root):
    *_, summary, following = (study_root / "start.txt").read_text().strip().splitlines()
    best = ranked_trials(study_root)[0]
    assert re.fullmatch(rf"study 'rr': 4/4 finished \(4 in this run, 0 of them pruned\), 0 failed, in \d+ (s|min); "
                        rf"best: trial {best.number}, val_acc {best.value:.4f}", summary), summary
    assert following == "next: search export --study rr"


def ranked_trials(root: Path) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in trials_of(root / "search.db", "rr") if t.state == TrialState.COMPLETE]
    return sorted(done, key=lambda t: (-t.value, t.number))


def test_rerank_exports_the_trial_with_the_best_mean_over_seeds(study_root):
    proc = run(["export", "--study", "rr", "--rerank", "3", "--seeds", "2", "--rerank-dir", "rr-runs",
                "-o", "winner.yaml"], study_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best3 = ranked_trials(study_root)[:3]
    means = {}
    for t in best3:
        folder = study_root / "rr-runs" / f"trial-{t.number}"
        assert sorted(p.name for p in folder.iterdir()) == ["seed-1", "seed-2", "summary.json"]  # fresh seeds
        summary = json.loads((folder / "summary.json").read_text())
        runs = [json.loads((folder / f"seed-{s}" / "metrics.json").read_text()) for s in (1, 2)]
        assert summary["val_acc"]["values"] == [m["val_acc"] for m in runs]  # summary.json now holds val_acc too
        means[t.number] = summary["val_acc"]["mean"]
    search_rank = {t.number: i for i, t in enumerate(best3)}
    winner = min(means, key=lambda n: (-means[n], search_rank[n]))

    written = yaml.safe_load((study_root / "winner.yaml").read_text())
    notes = written.pop("search")
    assert notes["trial"] == winner and notes["rerank"] == 3 and notes["seeds"] == [1, 2]
    assert notes["study"] == "rr" and notes["metric"] == "val_acc"
    assert notes["mean"] == pytest.approx(means[winner])
    trial = next(t for t in best3 if t.number == winner)
    assert written == {**trial.user_attrs["config"], "device": "auto"}

    lines = proc.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "trial"])
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [int(r[1]) for r in rows] == sorted(means, key=lambda n: (-means[n], search_rank[n]))  # K rows, best first
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert f"trial {winner} " in lines[header + 4] and "winner.yaml" in lines[header + 4]
    assert len([line for line in lines if line.startswith("trial ") and " seed " in line]) == 6  # a line per run
    numbers = [t.number for t in best3]
    assert lines[0] == (f"retraining the 3 best trials ({', '.join(map(str, numbers))}) with 2 seeds each: 6 runs in "
                        f"rr-runs")  # before any run is trained
    for n in numbers:  # each trial says it starts before its runs' lines
        begun = lines.index(f"trial {n}: training seeds 1..2, one after another -> rr-runs/trial-{n}")
        assert all(lines.index(line) > begun for line in lines if line.startswith(f"trial {n} seed "))

    final = run(["train", "winner.yaml", "--epochs", "1", "--out", "final", "--device", "cpu"], study_root)
    assert final.returncode == 0, final.stderr
    assert (study_root / "final" / "metrics.json").exists()


def test_rerank_on_cpu_processes_pools_every_trials_seeds(study_root):
    """Two trials x two seeds over two processes: one pool for all four runs, each trial's summary its own."""
    proc = run(["export", "--study", "rr", "--rerank", "2", "--seeds", "2", "--devices", "cpu,cpu",
                "--rerank-dir", "rr-par", "-o", "par.yaml"], study_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "training 2 trials x 2 seeds in parallel on cpu (" in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("retraining the 2 best trials (") and lines[0].endswith("4 runs in rr-par")
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for t in ranked_trials(study_root)[:2]:  # which runs are going, then which finished
        for seed in (1, 2):
            begun = lines.index(f"trial {t.number} seed {seed}: training on cpu ({threads} threads) -> "
                                f"rr-par/trial-{t.number}/seed-{seed}")
            done = next(i for i, line in enumerate(lines) if line.startswith(f"trial {t.number} seed {seed}: val_acc"))
            assert begun < done
    means = {}
    for t in ranked_trials(study_root)[:2]:
        folder = study_root / "rr-par" / f"trial-{t.number}"
        summary = json.loads((folder / "summary.json").read_text())
        runs = [json.loads((folder / f"seed-{s}" / "metrics.json").read_text()) for s in (1, 2)]
        assert summary["seeds"] == [1, 2] and summary["val_acc"]["values"] == [r["val_acc"] for r in runs]
        assert [r["seed"] for r in runs] == [1, 2] and all(r["architecture"] == "simple_cnn_v1" for r in runs)
        means[t.number] = summary["val_acc"]["mean"]
    best = max(means, key=lambda n: (means[n], -[t.number for t in ranked_trials(study_root)].index(n)))
    assert yaml.safe_load((study_root / "par.yaml").read_text())["search"]["trial"] == best


@pytest.mark.parametrize("args, message", [
    (["--seeds", "2"], "--seeds needs --rerank K"),
    (["--devices", "cpu"], "--devices needs --rerank K"),
    (["--rerank-dir", "x"], "--rerank-dir needs --rerank K"),
    (["--rerank", "2", "--rank", "1"], "--rank 1 and --rerank 2 exclude each other"),
    (["--rerank", "2", "--weights"], "--weights and --rerank exclude each other"),
    (["--rerank", "5"], "--rerank 5 is out of range: study 'rr' has 4 complete trials; valid: 1..4"),
    (["--rerank", "1", "--devices", "cpu,,cpu"], "has an empty entry"),
    (["--rerank", "1", "-o", "missing/best.yaml"], "folder missing does not exist"),
    (["--pareto"], "study 'rr' has one objective (val_acc), so no Pareto front"),
    (["--ensemble", "2"], "--ensemble needs --rerank K"),
    (["--rerank", "2", "--ensemble", "3"], "--ensemble 3 is out of range: it takes the M best of the --rerank 2 "
                                           "trials; valid: 1..2"),
])
def test_rerank_errors_are_one_line_and_write_nothing(study_root, args, message):
    before = sorted(study_root.rglob("*"))
    proc = run(["export", "--study", "rr", *args], study_root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: ") and message in proc.stderr, proc.stderr
    assert sorted(study_root.rglob("*")) == before


def test_rerank_refuses_a_trial_folder_that_holds_a_finished_run(study_root):
    second = ranked_trials(study_root)[1]
    taken = study_root / "taken" / f"trial-{second.number}"
    taken.mkdir(parents=True)
    (taken / "summary.json").write_text("{}\n")
    proc = run(["export", "--study", "rr", "--rerank", "2", "--seeds", "2", "--rerank-dir", "taken",
                "-o", "taken.yaml"], study_root)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"Error: {Path('taken') / f'trial-{second.number}'} already holds a finished run "
                                   f"(summary.json); choose another --rerank-dir or remove it")
    assert [p.name for p in (study_root / "taken").iterdir()] == [taken.name]  # the best trial was not trained
    assert not (study_root / "taken.yaml").exists()


def test_ctrl_c_keeps_the_trials_that_finished(study_root):
    first = ranked_trials(study_root)[0]
    done = study_root / "stopped" / f"trial-{first.number}" / "summary.json"
    cmd = Interruptible.start(["export", "--study", "rr", "--rerank", "4", "--seeds", "2", "--rerank-dir", "stopped",
                               "-o", "stopped.yaml"], study_root)
    wait_for(done.exists, 120, f"{done}", every=0.05)
    cmd.ctrl_c()
    assert cmd.proc.returncode == 130, cmd.text()
    errors = [line for line in cmd.err if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: interrupted (SIGINT)"), cmd.text()
    assert "kept in stopped" in errors[0] and "Traceback" not in cmd.text()
    assert json.loads(done.read_text())["seeds"] == [1, 2]
    assert not (study_root / "stopped.yaml").exists()
    # every folder that holds a summary holds both runs: the one stopped mid-run left no summary
    for folder in (study_root / "stopped").iterdir():
        if (folder / "summary.json").exists():
            assert all((folder / f"seed-{s}" / "metrics.json").exists() for s in (1, 2))


def test_export_ensemble_writes_a_folder_that_train_and_report_evaluate_as_a_run(study_root, monkeypatch):
    proc = run(["export", "--study", "rr", "--rerank", "2", "--seeds", "1", "--ensemble", "2", "--rerank-dir",
                "ens-runs", "--ensemble-dir", "ens", "-o", "ens-best.yaml"], study_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ens = study_root / "ens"
    spec = yaml.safe_load((ens / "ensemble.yaml").read_text())
    trials = [t.number for t in ranked_trials(study_root)[:2]]
    assert spec["kind"] == "ensemble" and spec["dataset"] == "digits" and len(spec["members"]) == 2
    assert sorted(m["trial"] for m in spec["members"]) == sorted(trials) and spec["source"]["ensemble"] == 2
    for m in spec["members"]:  # the kept weights themselves, copied: nothing was retrained
        assert (ens / m["weights"]).read_bytes() == (study_root / m["run"] / "model.pt").read_bytes()
    # its test probabilities are the mean of its members' (the runs' own test_predictions.csv)
    members = [_probabilities(study_root / m["run"] / "test_predictions.csv") for m in spec["members"]]
    assert np.allclose(_probabilities(ens / "test_predictions.csv"), np.mean(members, axis=0), atol=1e-5)
    m = json.loads((ens / "metrics.json").read_text())
    assert f"ensemble of 2 (simple_cnn_v1): the runs of the 2 best trials -> ens: test_acc {m['test_acc']:.4f}" \
        in proc.stdout
    assert sum(map(sum, m["test_confusion"])) == 269 and 0 < m["val_acc"] <= 1

    monkeypatch.chdir(study_root)  # `search train ENSEMBLE` evaluates it again, as a run, training nothing
    evaluated = CliRunner().invoke(main, ["train", "ens", "--out", "ens-eval", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((study_root / "ens-eval" / "metrics.json").read_text())
    assert again["test_acc"] == pytest.approx(m["test_acc"]) and again["test_confusion"] == m["test_confusion"]
    assert evaluated.output.startswith(f"digits ensemble of 2 (simple_cnn_v1): test_acc {m['test_acc']:.4f}")
    refused = CliRunner().invoke(main, ["train", "ens", "--seeds", "2"])
    assert refused.exit_code == 2 and "is an ensemble: `search train` evaluates it" in refused.output

    # `search report` takes it as a group: the comparison table and McNemar's test against a single run
    groups = report.load_groups([f"one=ens-runs/trial-{trials[0]}", "ens=ens"])
    (table,) = [i for i in report.comparison_section(groups).items if isinstance(i, report.Table)]
    assert table.rows[1][:3] == ["ens", "1", f"{m['test_acc']:.4f}"] and table.columns[-1] == "McNemar p"
    assert table.rows[1][-1] != "n/a"


def _probabilities(path: Path) -> np.ndarray:
    with path.open(newline="") as f:
        return np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(f)])
