"""Studies with several objectives (accuracy against cost): the study file, the objective's values, and the
Pareto front in `search status`, `search export` and `search report`, end to end on a real SQLite store."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.errors import SearchError
from search.hpo import goals
from search.hpo.objective import Objective
from search.hpo.studies import load_study, make_sampler
from search.train import config
from tests.support.cli import run
from tests.support.store import trials_of

optuna.logging.set_verbosity(optuna.logging.WARNING)

FRONT_STUDY = """\
name: front
dataset: digits
objectives:
  - {{metric: val_acc, direction: maximize}}
  - {{metric: {cost}, direction: minimize}}
epochs: 1
trials: {trials}
sampler: {{name: {sampler}, seed: 0}}
space:
  architecture: {{type: categorical, choices: [simple_cnn_v1, simple_cnn_v2]}}
  lr: {{type: categorical, choices: [0.00001, 0.003]}}
fixed:
  batch_size: 64
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# --- the study file -----------------------------------------------------------------------------------------

def test_objectives_load(tmp_path):
    spec = load_study(str(write(tmp_path, "f", FRONT_STUDY.format(cost="latency_ms", trials=4, sampler="nsgaii"))))
    assert spec.objectives == (("val_acc", "maximize"), ("latency_ms", "minimize"))
    assert spec.directions == ["maximize", "minimize"] and spec.multi
    assert spec.metric == "val_acc"  # the kept epoch is picked by the validation metric among the objectives
    assert spec.pruner == {"name": "none"}
    assert isinstance(make_sampler(spec), optuna.samplers.NSGAIISampler)


BASE = "name: t\ndataset: digits\n"
PAIR = "objectives: [{metric: val_acc, direction: maximize}, {metric: params, direction: minimize}]\n"


@pytest.mark.parametrize("text, message", [
    (BASE + "metric: val_acc\n" + PAIR, "objectives replaces metric; keep one of the two forms"),
    (BASE + PAIR + "pruner: median\n", "pruner median: a study with several objectives cannot be pruned (Optuna "
                                       "prunes single-objective studies only); remove the pruner or set it to none"),
    (BASE + PAIR + "sampler: cmaes\n", "sampler cmaes optimises one objective only; with several objectives use "
                                       "one of: tpe, random, qmc, gp, nsgaii, nsgaiii"),
    (BASE + "objectives: [{metric: flops, direction: minimize}]\n",
     "objectives[0]: metric 'flops' is not known; valid: val_acc, val_auc, params, epoch_seconds, latency_ms"),
    (BASE + "objectives: [{metric: val_acc, direction: minimize}]\n",
     "objectives[0]: val_acc can only be maximized (the kept epoch is its highest)"),
    (BASE + "objectives: [{metric: val_acc, direction: maximize}, {metric: params, direction: smaller}]\n",
     "objectives[1]: direction 'smaller' is not known; valid: maximize, minimize"),
    (BASE + "objectives: [{metric: params, direction: minimize}, {metric: latency_ms, direction: minimize}]\n",
     "the first objective must be val_acc or val_auc (it picks each trial's kept epoch, and reports rank by it); "
     "got params, latency_ms"),
    (BASE + "objectives: [{metric: params, direction: minimize}, {metric: val_acc, direction: maximize}]\n",
     "the first objective must be val_acc or val_auc"),
    (BASE + "objectives: [{metric: val_acc, direction: maximize}, {metric: val_acc, direction: maximize}]\n",
     "objectives[1]: metric val_acc is named twice"),
    (BASE + "objectives: [{metric: val_acc}]\n",
     "objectives[0]: expected a mapping with exactly the keys metric and direction, got {'metric': 'val_acc'}"),
    (BASE + "objectives: val_acc\n", "objectives must be a list of {metric, direction} mappings such as"),
])
def test_bad_objectives_are_one_line(tmp_path, text, message):
    path = write(tmp_path, "bad", text)
    with pytest.raises(SearchError) as err:
        load_study(str(path))
    assert err.value.message.startswith(f"{path}: {message}"), err.value.message
    assert "\n" not in err.value.message


def test_dominated():
    directions = ["maximize", "minimize"]
    assert goals.dominated([0.9, 100], [[0.95, 50]], directions)
    assert goals.dominated([0.9, 100], [[0.9, 50]], directions)  # as good in one, better in the other
    assert not goals.dominated([0.9, 100], [[0.9, 100]], directions)  # equal: neither dominates
    assert not goals.dominated([0.9, 100], [[0.95, 150], [0.85, 50]], directions)


# --- the objective's values -----------------------------------------------------------------------------------

def test_a_trial_returns_one_value_per_objective(tmp_path):
    """Accuracy, parameters, seconds per epoch and latency, measured by the real training loop on digits."""
    text = (BASE + "epochs: 2\nobjectives: [{metric: val_acc, direction: maximize}, {metric: params, direction: "
            "minimize}, {metric: epoch_seconds, direction: minimize}, {metric: latency_ms, direction: minimize}]\n"
            "fixed: {architecture: simple_cnn_v1, batch_size: 64, lr: 0.003}\n")
    spec = load_study(str(write(tmp_path, "four", text)))
    study = optuna.create_study(directions=spec.directions)
    study.optimize(Objective(spec, "cpu"), n_trials=1)
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE, t.user_attrs.get("reason")
    acc, params, seconds, latency = t.values
    assert 0.5 < acc <= 1.0  # digits learns in two epochs
    assert params == t.user_attrs["params"] > 1000
    assert 0 < seconds and math.isclose(seconds, t.user_attrs["epoch_seconds"], rel_tol=0.01)
    assert 0 < latency < 1000 and t.user_attrs["latency_ms"] == pytest.approx(latency, rel=1e-3)
    assert t.intermediate_values == {}  # nothing reported: Optuna takes no intermediate values here


# --- end to end ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def front_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("front")
    write(root, "front", FRONT_STUDY.format(cost="params", trials=5, sampler="tpe"))
    done = run(["start", "--study", "front.yaml", "--workers", "1"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on the Pareto front |" in done.stdout  # the totals line names the front's size, not a best value
    return root


@pytest.mark.e2e
def test_the_front_end_to_end(front_study):
    trials = trials_of(front_study / "search.db", "front")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5 and all(len(t.values) == 2 for t in complete)
    rows = [t.values for t in complete]
    front = [t for t in complete if not goals.dominated(t.values, rows, ["maximize", "minimize"])]
    assert front

    status = run(["status", "--study", "front"], front_study)
    assert status.returncode == 0, status.stderr
    assert "2 objectives" in status.stdout
    assert f"Pareto front of val_acc (max) vs params (min): {len(front)} trial" in status.stdout
    listed = run(["export", "--study", "front", "--pareto"], front_study)
    assert listed.returncode == 0, listed.stderr
    numbers = sorted(int(line.split()[1]) for line in listed.stdout.splitlines() if line.startswith("  trial"))
    assert numbers == sorted(t.number for t in front)
    assert not (front_study / "best.yaml").exists()  # --pareto lists, writes nothing

    chosen = front[-1]
    one = run(["status", "--study", "front", "--trial", str(chosen.number)], front_study)
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith(f"trial {chosen.number}: complete val_acc {chosen.values[0]:.4f}, params "
                                 f"{chosen.values[1]:,.0f}\n")
    out = run(["export", "--study", "front", "--trial", str(chosen.number), "-o", "chosen.yaml"], front_study)
    assert out.returncode == 0, out.stderr
    cfg = config.load(front_study / "chosen.yaml")
    assert cfg.architecture == chosen.params["architecture"] and cfg.lr == chosen.params["lr"]
    notes = yaml.safe_load((front_study / "chosen.yaml").read_text())["search"]
    assert notes["trial"] == chosen.number
    assert notes["values"] == {"val_acc": chosen.values[0], "params": chosen.values[1]}


@pytest.mark.e2e
def test_export_without_a_trial_names_the_front(front_study):
    out = run(["export", "--study", "front"], front_study)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("Error: study 'front' has several objectives, so no single best trial: choose one "
                                 "with --trial N; its Pareto front: trials ")
    assert len(out.stderr.strip().splitlines()) == 1
    missing = run(["export", "--study", "front", "--trial", "99"], front_study)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "Error: --trial 99 does not exist in study 'front'; valid: 0..4"
    for args, message in ((["--trial", "1", "--rank", "2"], "--rank 2 and --trial 1 exclude each other"),
                          (["--pareto", "--trial", "1"], "--pareto lists the Pareto front and writes nothing")):
        both = run(["export", "--study", "front", *args], front_study)
        assert both.returncode == 2 and both.stderr.startswith(f"Error: {message}"), both.stderr
    assert not (front_study / "best.yaml").exists()


@pytest.mark.e2e
def test_the_report_draws_the_front(front_study):
    made = run(["report", "--study", "front", "-o", "out"], front_study)
    assert made.returncode == 0, made.stderr
    out = front_study / "out"
    assert (out / "figures" / "pareto_front.png").stat().st_size > 10_000
    assert (out / "figures" / "pareto_front.pdf").exists()
    table = (out / "tables" / "pareto_front.md").read_text()
    trials = trials_of(front_study / "search.db", "front")
    rows = [t.values for t in trials if t.state == TrialState.COMPLETE]
    for t in trials:
        if t.state == TrialState.COMPLETE and not goals.dominated(t.values, rows, ["maximize", "minimize"]):
            assert f"| {t.number} " in table
    page = (out / "index.html").read_text()
    assert "Pareto front" in page and "objectives: validation accuracy (maximize) and parameters (minimize)" in page
    assert "a study with several objectives is not pruned" in page
    assert (out / "trials.csv").read_text().splitlines()[0].startswith("number,state,val_acc,params,")
