"""bench/gpu_proof.py end to end on the CPU (--cpu-dry-run: tiny sizes, the same code apart from the device), so
the script that proves the CUDA path on a GPU machine cannot rot where no GPU is."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e  # every test here starts real processes

PROOF = Path(__file__).resolve().parents[1] / "bench" / "gpu_proof.py"


def test_cpu_dry_run_runs_every_section_and_writes_the_figures(tmp_path):
    out = tmp_path / "proof"
    proc = subprocess.run([sys.executable, str(PROOF), "--out", str(out), "--cpu-dry-run"], cwd=tmp_path,
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # no library warning, log line or traceback reaches the terminal
    assert "Traceback" not in proc.stdout and "Warning" not in proc.stdout
    result = json.loads((out / "gpu_proof.json").read_text())
    assert result["mode"] == "cpu-dry-run" and result["ok"] is True
    assert result["checks"] == {"pytest_gpu": True, "speed": True, "graphs": True, "packing": True, "packs": True,
                                "real_mnist": True}
    # targets are reported (met or not), apart from the checks: tiny CPU runs meet none of the speed targets
    assert result["targets"] and not any(k in result["checks"] for k in result["targets"])
    assert all(f"target {k}: {'met' if v else 'NOT met'}" in proc.stdout for k, v in result["targets"].items())
    graphs = result["graphs"]["models"]["simple_cnn_v2"]
    assert graphs["eager"]["step_ms"] > 0 and graphs["graphed"]["graphed"] is False  # no graphs on the CPU
    assert result["pytest_gpu"]["failures"] == 0 and result["pytest_gpu"]["skipped"] >= 1  # no GPU here
    v2 = result["speed"]["models"]["simple_cnn_v2"]
    assert v2["reference"]["images_per_second"] > 0 and v2["engine"]["images_per_second"] > 0
    assert v2["graphed"]["images_per_second"] > 0 and v2["engine"]["share_of_matmul"] > 0
    assert v2["engine"]["precision"] == "fp32" and result["speed"]["compile_simple_cnn_v2"]["compiled"] is False
    runs = result["packing"]["runs"]
    assert runs and all(r["complete"] == result["packing"]["trials_each"] > 0 for r in runs.values())
    packs = result["packs"]
    assert packs["search"]["complete"] == packs["search"]["trials"] == 2 and packs["search"]["pack"] == 2
    assert all(m["fused_images_per_second"] > 0 for m in packs["images_per_second"].values())
    assert 0 <= result["real_mnist"]["test_acc"] <= 1
    assert (out / "pytest-gpu.log").exists() and (out / "real-mnist" / "metrics.json").exists()
    assert "every check holds" in proc.stdout.splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU visible this would run the full proof")
def test_without_a_gpu_the_full_proof_refuses_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(PROOF), "--out", str(tmp_path / "o")], check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--cpu-dry-run" in proc.stderr


def test_bad_arguments_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(PROOF), "--cpu-dry-run"], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--out" in proc.stderr
