"""bench/pruning.py end to end on tiny generated PathMNIST-shaped data (two arms in two spawned processes), so the
benchmark that chooses the shipped studies' pruners cannot rot. Figures only: no time is asserted."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # every test here starts real processes

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pruning.py"
TRIALS, EPOCHS = 3, 2


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=tmp_path, check=False, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_two_arms_on_pathmnist_shaped_data_print_their_figures_and_the_comparison(tmp_path):
    proc = run(tmp_path, "--data", "pathmnist-shaped", "--samples", "640,128,128", "--architectures",
               "simple_cnn_v2", "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--arms", "hyperband,none",
               "--jobs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "Warning" not in proc.stdout + proc.stderr
    out = proc.stdout
    assert "study pathmnist (pathmnist, val_acc) on PathMNIST-shaped generated data 640 / 128 / 128" in out
    # The study prunes with successive halving: hyperband runs with Optuna's defaults, max_resource = --epochs.
    assert "  hyperband: {'name': 'hyperband', 'max_resource': 2}" in out
    assert "warm start: enqueue[0]: architecture: 'resnet18'" in out  # outside --architectures: skipped, said so

    # Per arm: trials pruned failed epochs wall-s best-val trial test retrained-val
    number = r"(\d+\.\d+|n/a)"
    arms = {m[1]: m.groups()[1:] for m in re.finditer(
        rf"^  (hyperband|none) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+\.\d) +{number} +(\d+|None) +{number} +{number}$",
        out, re.M)}
    assert set(arms) == {"hyperband", "none"}, out
    none, hyperband = arms["none"], arms["hyperband"]
    assert none[:4] == (str(TRIALS), "0", "0", str(TRIALS * EPOCHS)), out  # no pruner: every trial runs every epoch
    assert hyperband[0] == str(TRIALS) and 0 < int(hyperband[3]) <= TRIALS * EPOCHS, out
    for figures in arms.values():
        best, test, retrained = (float(v) for v in (figures[5], figures[7], figures[8]))
        assert 0 < best <= 1 and 0 < test <= 1 and 0 < retrained <= 1, out

    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and not line.startswith("| pruner")}
    assert set(rows) == {"none", "hyperband"}, out
    epochs, saving, ratio, best, diff, test, test_diff, met = rows["hyperband"]
    assert epochs == hyperband[3] and saving == f"{1 - int(epochs) / (TRIALS * EPOCHS):.0%}", out
    assert float(ratio) > 0 and best == hyperband[5] and test == hyperband[7], out
    assert diff == f"{100 * (float(best) - float(none[5])):+.2f}", out
    assert re.fullmatch(r"[+-]\d+\.\d\d", test_diff) and re.fullmatch(r"yes|no: .+", met), out
    assert ("yes" == met) == (1 - int(epochs) / (TRIALS * EPOCHS) >= 0.4 and float(diff) >= -0.5), out


def test_an_architecture_outside_the_study_is_one_line_and_status_2(tmp_path):
    proc = run(tmp_path, "--data", "pathmnist-shaped", "--samples", "64,16,16", "--architectures", "vgg16")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "vgg16" in line and "simple_cnn_v2" in line
