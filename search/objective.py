"""trial -> TrainConfig -> engine.fit: report the study metric each epoch and prune when the pruner says so.

Each trial records, as user attributes: `worker` ("host:pid"), `device`, `config` (the full TrainConfig, which
`search export` writes back), and once trained `params`, `epoch_seconds`, `images_per_second`, `epochs_run`;
a diverged, failed or interrupted run records `reason`. The test split is never touched here.
"""
from __future__ import annotations

import math
import os
import socket
from typing import Callable

import optuna

from search import engine
from search.space import trial_config
from search.studies import StudySpec


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Objective:
    """Callable for Optuna: trains one trial on ``device`` and returns its best validation metric."""

    def __init__(self, spec: StudySpec, device: str, on_start: Callable[[int], None] | None = None) -> None:
        self.spec, self.device, self.on_start = spec, device, on_start

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # SIGINT or SIGTERM: the worker is being stopped
            trial.set_user_attr("reason", "interrupted")
            raise
        except (optuna.TrialPruned, Diverged):
            raise
        except Exception as err:  # recorded with the trial; Optuna marks it FAIL
            trial.set_user_attr("reason", f"{type(err).__name__}: {err}"[:1000])
            raise

    def _run(self, trial: optuna.Trial) -> float:
        if self.on_start is not None:
            self.on_start(trial.number)  # the supervisor must know which trial to fail if this process dies
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", self.device)
        cfg = trial_config(self.spec, trial)
        trial.set_user_attr("config", cfg.to_dict())  # device 'auto': the exported file runs anywhere
        pruned = False

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            nonlocal pruned
            value = metrics[self.spec.metric]
            if math.isfinite(value):
                trial.report(value, epoch)
            pruned = trial.should_prune()
            return pruned

        result = engine.fit(cfg.replace(device=self.device), on_epoch=on_epoch)
        trial.set_user_attr("params", result.params)
        trial.set_user_attr("epochs_run", len(result.history))
        if result.history:
            trial.set_user_attr("epoch_seconds", round(sum(h["seconds"] for h in result.history)
                                                       / len(result.history), 3))
            trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
        if result.outcome == "diverged":
            trial.set_user_attr("reason", result.reason)
            raise Diverged(result.reason)
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)}")
        return result.best[self.spec.metric]


class Diverged(RuntimeError):
    """A trial whose loss became NaN or infinite: recorded as FAIL with its reason."""
