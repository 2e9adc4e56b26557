"""README.md is the door: its quickstart runs as written, its examples load, and its links lead somewhere."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.hpo.studies import load_study
from search.train import config
from tests.support.cli import cli_env, search_cmd
from tests.support.store import FINISHED, by_state, trials_of

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section(text: str, heading: str) -> str:
    """The body of the `## heading...` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {heading}'"
    return match.group(1)


def quickstart_lines() -> list[str]:
    """The `search ...` lines of the quickstart's first code block (indented four spaces), as written."""
    body = section(README.read_text(), "Quickstart")
    block = re.search(r"((?:^    \S.*\n)+)", body, re.M)
    assert block, "the quickstart has no code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip().startswith("search ")]


def run_line(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """One README line through a shell, with the installed `search` command first on PATH (as after the install)."""
    exe = search_cmd()
    assert len(exe) == 1, "the `search` command is not installed beside this Python (pip install -e .)"
    env = cli_env(PATH=f"{Path(exe[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def check_start(cwd: Path, out: str) -> None:
    trials = trials_of(cwd / "search.db", "digits")
    assert len(by_state(trials, *FINISHED)) == 12, [t.state for t in trials]  # the digits study's budget
    assert by_state(trials, TrialState.COMPLETE)


def _study(cwd: Path) -> optuna.Study:
    """The quickstart's study, read from its store by Optuna itself (not through the code under test)."""
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{cwd / 'search.db'}")


def check_status(cwd: Path, out: str) -> None:
    study = _study(cwd)
    trials = study.get_trials()
    states = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned")}
    first = out.splitlines()[0]
    assert first.startswith(f"study 'digits' (digits, val_acc, maximize): {len(trials)} trials: "), out
    assert f"{states['complete']} complete" in first and f"{states['pruned']} pruned" in first, out
    best = [line for line in out.splitlines() if line.startswith("best val_acc ")]
    assert best and best[0].startswith(f"best val_acc {study.best_value:.4f} (trial "), out
    shown = int(best[0].split("(trial ")[1].split(")")[0])
    assert study.trials[shown].value == study.best_value, out  # a best trial (ties may pick another number)


def check_export(cwd: Path, out: str) -> None:
    study = _study(cwd)
    cfg = config.load(cwd / "best.yaml")
    notes = yaml.safe_load((cwd / "best.yaml").read_text())["search"]
    assert notes["study"] == "digits" and notes["metric"] == "val_acc" and notes["rank"] == 1, notes
    assert notes["value"] == study.best_value, notes
    best = study.trials[notes["trial"]]
    assert best.state == TrialState.COMPLETE and best.value == study.best_value
    assert cfg.dataset == "digits"
    trained = config.from_dict(best.user_attrs["config"])  # what the worker trained, as the store recorded it
    for name in (*best.params, "architecture", "epochs", "batch_size", "lr"):  # the file is that trial's config
        assert getattr(cfg, name) == getattr(trained, name), (name, getattr(cfg, name), getattr(trained, name))


def check_train(cwd: Path, out: str) -> None:
    metrics = json.loads((cwd / "runs" / "digits-best" / "metrics.json").read_text())
    # ten digit classes: a model that learned anything is far above chance (0.1)
    assert metrics["test_acc"] > 0.5, metrics
    assert (cwd / "runs" / "digits-best" / "model.pt").is_file()


CHECKS = {"start": check_start, "status": check_status, "export": check_export, "train": check_train}


@pytest.mark.e2e
def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    lines = quickstart_lines()
    assert [line.split()[1] for line in lines] == list(CHECKS), lines
    for line in lines:
        done = run_line(line, tmp_path)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        CHECKS[line.split()[1]](tmp_path, done.stdout)


def yaml_blocks(text: str) -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)]


def test_the_readme_examples_are_a_valid_study_and_a_valid_config(tmp_path: Path) -> None:
    blocks = yaml_blocks(section(README.read_text(), "Study files"))
    studies = [b for b in blocks if "space" in b]
    configs = [b for b in blocks if "space" not in b]
    assert len(studies) == 1 and len(configs) == 1, blocks
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(studies[0]))
    spec = load_study(str(path))
    assert spec.name == studies[0]["name"]
    assert config.from_dict(configs[0]).architecture == configs[0]["architecture"]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}


MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(link)
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_stays_a_door() -> None:
    assert len(README.read_text().splitlines()) < 300
