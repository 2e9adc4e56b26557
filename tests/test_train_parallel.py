"""`search train --seeds N --devices LIST`: the seeds in parallel processes give the files and summary of the
sequential run; a bad --devices is one line with nothing written."""
import json
import os
import subprocess

import pytest
import torch
from click.testing import CliRunner

from search.cli import main
from tests.support.cli import cli_env, search_cmd

# Per-run timings: the only keys allowed to differ between two runs of the same seed.
TIMES = ("seconds", "images_per_second", "test_ms_per_image")  # measured: they differ between any two runs


def _without_times(metrics: dict) -> dict:
    kept = {k: v for k, v in metrics.items() if k not in TIMES}
    kept["history"] = [{k: v for k, v in h.items() if k not in TIMES} for h in metrics["history"]]
    return kept


@pytest.mark.e2e
def test_parallel_seeds_write_what_the_sequential_run_writes(tmp_path):
    cfg = tmp_path / "digits.yaml"
    cfg.write_text("dataset: digits\nepochs: 2\nbatch_size: 64\n")
    # CPU training is reproducible at a fixed thread count, but not across thread counts (on two cores, 1 and 2
    # threads give the same test_acc and a different val_auc): the sequential run uses the thread count that each
    # of the two parallel processes gets (the cores // 2).
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    outs = {}
    for name, args, env in (("parallel", ["--devices", "cpu,cpu"], {}),
                            ("sequential", [], {"OMP_NUM_THREADS": str(threads)})):
        outs[name] = out = tmp_path / name
        proc = subprocess.run(search_cmd() + ["train", str(cfg), "--out", str(out), "--seeds", "2", "--device",
                                              "cpu", *args], capture_output=True, text=True, env=cli_env(**env),
                              timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 3, proc.stdout
        assert sorted(line.split(":")[0] for line in lines[:2]) == ["digits simple_cnn_v2 seed 0",
                                                                    "digits simple_cnn_v2 seed 1"]
        assert lines[2].startswith("digits simple_cnn_v2, 2 seeds: test_acc") and "(mean ± sample sd)" in lines[2]
        assert "Traceback" not in proc.stderr
    par, seq = outs["parallel"], outs["sequential"]
    assert sorted(p.name for p in par.iterdir()) == ["seed-0", "seed-1", "summary.json"]
    assert json.loads((par / "summary.json").read_text()) == json.loads((seq / "summary.json").read_text())
    for seed in ("seed-0", "seed-1"):
        files = sorted(p.name for p in (par / seed).iterdir())
        assert files == ["config.yaml", "metrics.json", "model.pt", "test_predictions.csv"]
        assert files == sorted(p.name for p in (seq / seed).iterdir())
        m_par, m_seq = (json.loads((d / seed / "metrics.json").read_text()) for d in (par, seq))
        assert m_par["test_acc"] == m_seq["test_acc"] and m_par["test_auc"] == m_seq["test_auc"]
        assert _without_times(m_par) == _without_times(m_seq)
        for name in ("config.yaml", "test_predictions.csv"):
            assert (par / seed / name).read_text() == (seq / seed / name).read_text()
        w_par, w_seq = (torch.load(d / seed / "model.pt", weights_only=True)["state_dict"] for d in (par, seq))
        assert all(torch.equal(w_par[k], w_seq[k]) for k in w_seq)


@pytest.mark.parametrize("devices, words", [
    ("cpu,,cpu", "has an empty entry"),
    ("", "has an empty entry"),
    ("99", "no GPU 99 ("),
    ("cpu,gpu0", "'gpu0' is neither a GPU index nor cpu"),
])
def test_bad_devices_is_one_line_and_writes_nothing(tmp_path, devices, words):
    (tmp_path / "c.yaml").write_text("dataset: digits\nepochs: 1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.yaml"), "--out", str(out), "--seeds", "2",
                                       "--devices", devices])
    assert result.exit_code == 2, result.output
    output = result.output.strip()
    assert len(output.splitlines()) == 1 and output.startswith("Error: ") and words in output, output
    assert not out.exists()


def test_devices_without_seeds_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: digits\nepochs: 1\n")
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"),
                                       "--devices", "cpu"])
    assert result.exit_code == 2 and "--devices needs --seeds" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_more_devices_than_seeds_start_one_process_per_seed(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: digits\nepochs: 1\nbatch_size: 64\n")
    out = tmp_path / "out"
    proc = subprocess.run(search_cmd() + ["train", str(tmp_path / "c.yaml"), "--out", str(out), "--seeds", "1",
                                          "--devices", "cpu,cpu,cpu", "--device", "cpu"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"training seeds 0..0 in parallel on cpu ({cores} threads)\n" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["seed-0", "summary.json"]
