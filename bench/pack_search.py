"""Trials per hour and the best value found by packed searches: the digits study at --pack 1, 4 and 8, with the same
workers and the same budget, each with several sampler seeds.

    python bench/pack_search.py [--packs 1,4,8] [--seeds 0,100,200] [--workers 2] [--budget 16] [--epochs 2]
                                [--device cpu] [--out DIR]

Each run is the real command line, `search start --study digits --workers W --pack K --trials B --seed S`, in a
fresh work folder (a SQLite store of its own) holding ./studies/digits.yaml: the shipped digits study (both small
CNNs, batch sizes 32 and 64, TPE, the median pruner) with only its epochs set to --epochs. Trials per hour are the
budget over the command's wall time (start-up included: a worker loads torch and the data once, whatever K); the
best value is the study's best val_acc, read from the store.

Prints one line per run, then per K: trials/h (mean +- sd over the seeds) and its ratio to K=1, and the best value
(mean +- sd) with its difference to K=1 and that difference's spread (the standard error of a difference of two
means, sqrt(sd1^2/n1 + sd2^2/n2)): a pack must not cost search quality. Figures are printed, never asserted. With 2
workers a pack of 8 needs a budget of at least 16 to form (the supervisor shares the end of the budget among them).

Time: the defaults (3 packs x 3 seeds x 16 trials of 2 epochs, 9 searches) took 17 minutes on this project's two
CPU cores shared with other work (load average 5 to 9): one search took 56 to 214 s by the load of the moment, so
trials/h moves far more with the machine than with K there (docs/packs.md). On quiet cores a search takes about a
minute, the defaults about 10 minutes; `--seeds 0 --budget 8` tries it in about 3.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

STUDY_FILE = REPO / "studies" / "digits.yaml"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def run_one(folder: Path, *, pack: int, seed: int, workers: int, budget: int, device: str) -> dict:
    """One `search start` in ``folder``: its wall time, finished trials, packs and best value."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "search", "start", "--study", "digits", "--workers", str(workers),
               "--pack", str(pack), "--trials", str(budget), "--seed", str(seed), "--devices", device]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"pack {pack} seed {seed} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{folder / 'search.db'}")
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    packs = {t.user_attrs["pack"]["id"] for t in trials if "pack" in t.user_attrs}
    return {"pack": pack, "seed": seed, "seconds": seconds, "finished": len(finished),
            "pruned": sum(t.state == TrialState.PRUNED for t in finished), "packs": len(packs),
            "packed": sum("pack" in t.user_attrs for t in trials),
            "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            "trials_per_hour": len(finished) * 3600 / seconds, "best": study.best_value}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=_ints, default=[1, 4, 8])
    parser.add_argument("--seeds", type=_ints, default=[0, 100, 200])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="Keep the work folders here (default: a temporary folder).")
    args = parser.parse_args()
    study = yaml.safe_load(STUDY_FILE.read_text())
    study["epochs"] = args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        print(f"digits study, {args.epochs} epochs per trial, budget {args.budget}, {args.workers} workers on "
              f"{args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        runs: dict[int, list[dict]] = {pack: [] for pack in args.packs}
        for seed in args.seeds:  # the packs in turn for each seed: a load that drifts meets them all alike
            for pack in args.packs:
                folder = root / f"pack-{pack}-seed-{seed}"
                (folder / "studies").mkdir(parents=True, exist_ok=True)
                (folder / "studies" / "digits.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
                r = run_one(folder, pack=pack, seed=seed, workers=args.workers, budget=args.budget,
                            device=args.device)
                runs[pack].append(r)
                print(f"  pack {pack} seed {seed}: {r['finished']} trials ({r['pruned']} pruned, {r['packed']} in "
                      f"{r['packs']} packs, {r['epochs']} epochs) in {r['seconds']:.1f} s = "
                      f"{r['trials_per_hour']:.0f} trials/h, best val_acc {r['best']:.4f}", flush=True)
        summary(runs)


def summary(runs: dict[int, list[dict]]) -> None:
    base = runs.get(1) or next(iter(runs.values()))
    rate0, _ = mean_sd([r["trials_per_hour"] for r in base])
    best0, sd0 = mean_sd([r["best"] for r in base])
    print("pack  trials/h (mean +- sd)  ratio to pack 1  best val_acc (mean +- sd)  difference to pack 1 +- spread")
    for pack, rs in runs.items():
        rate, rate_sd = mean_sd([r["trials_per_hour"] for r in rs])
        best, best_sd = mean_sd([r["best"] for r in rs])
        spread = math.sqrt(best_sd ** 2 / len(rs) + sd0 ** 2 / len(base))
        print(f"{pack:>4}  {rate:8.0f} +- {rate_sd:<8.0f}     {rate / rate0:5.2f}x          "
              f"{best:.4f} +- {best_sd:.4f}          {best - best0:+.4f} +- {spread:.4f}")


if __name__ == "__main__":
    main()
