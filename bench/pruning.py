"""Pruning: the same study and seed with its pruner and with none, at equal trial budgets, measured in one run.

    python bench/pruning.py [--study digits] [--trials 24] [--data-dir DIR] [--pruner "{name: hyperband}"]

Prints, for each arm, the training epochs spent (sum over trials) and the best validation metric, then the
epoch saving and the difference in best value. Target: >= 40% fewer epochs, best value within 0.5 points.
Trials run one after another in this process (one worker), on an in-memory study.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import optuna
import yaml

from search.hpo.objective import Objective
from search.hpo.studies import load_study, make_pruner, make_sampler
from search.train import data


def arm(spec, trials: int, device: str) -> tuple[int, float, float, int]:
    study = optuna.create_study(direction=spec.direction, sampler=make_sampler(spec), pruner=make_pruner(spec))
    start = time.perf_counter()
    study.optimize(Objective(spec, device), n_trials=trials, catch=(Exception,))
    epochs = sum(t.user_attrs.get("epochs_run", 0) for t in study.trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return epochs, study.best_value, time.perf_counter() - start, pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="digits")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--data-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pruner", help="a YAML mapping that replaces the study's pruner, e.g. '{name: hyperband}'")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_study(args.study, data_dir=args.data_dir)
    if args.pruner:
        spec = dataclasses.replace(spec, pruner=yaml.safe_load(args.pruner))
        make_pruner(spec)  # a bad mapping fails here, before any training
    data.prepare(spec.dataset, spec.data_dir)
    unpruned = dataclasses.replace(spec, pruner={"name": "none"})
    print(f"study {spec.name} ({spec.dataset}, {spec.metric}), {args.trials} trials each, up to {spec.epochs} "
          f"epochs per trial, sampler seed {spec.sampler.get('seed', 0)}, pruner {spec.pruner}")
    e1, v1, s1, p1 = arm(spec, args.trials, args.device)
    print(f"with pruner:  {e1:4d} epochs, best {spec.metric} {v1:.4f}, {p1} pruned, {s1:.0f} s")
    e0, v0, s0, _ = arm(unpruned, args.trials, args.device)
    print(f"without:      {e0:4d} epochs, best {spec.metric} {v0:.4f}, {s0:.0f} s")
    print(f"epochs saved: {1 - e1 / e0:.0%} (ratio {e1 / e0:.2f}); best value difference "
          f"{100 * (v1 - v0):+.2f} points; wall-clock ratio {s1 / s0:.2f}")


if __name__ == "__main__":
    main()
