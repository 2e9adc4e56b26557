"""trial -> TrainConfig -> engine.fit: the thin adapter between Optuna and the one training loop.

It reports the study metric each epoch, prunes when the pruner says so, and returns the kept epoch's validation
value (several objectives: one value each, and no epochs reported, as Optuna takes none). The one thing to know:
a trial's failure never costs the worker. Every exception is recorded with the trial (its `reason`, and the
traceback in its log, trial-N-log.txt); a CUDA out-of-memory error fails only its trial; files that cannot be
written (curves, weights, checkpoints) are warned about and never fail it. The test split is never touched here.
What each trial records (user attributes: worker, device, config, params, timings) is what status and export read.
"""
from __future__ import annotations

import gc
import logging
import math
from pathlib import Path
from typing import Callable

import optuna
import torch

from search.errors import StoreFault
from search.hpo import folds, goals, trial_log
from search.hpo.studies import StudySpec, suggest_config
from search.hpo.urls import worker_id
from search.results import artifacts
from search.train import checkpoint, engine, metrics

log = logging.getLogger("search")
_UNSET = object()
# torch >= 2.5 names the accelerator-independent class; torch.cuda.OutOfMemoryError is the same class there.
OUT_OF_MEMORY: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class Objective:
    """Callable for Optuna: trains one trial on ``device`` and returns its best validation metric (several
    objectives: the list of their values)."""

    def __init__(self, spec: StudySpec, device: str, on_start: Callable[[int], None] | None = None,
                 on_epoch: Callable[[int, int, int, float, float], None] | None = None) -> None:
        """``on_start(number)``: a trial starts; ``on_epoch(number, epoch, epochs, value, images_per_second)``:
        it finished an epoch (a supervised worker tells its supervisor both)."""
        self.spec, self.device, self.on_start, self.on_epoch = spec, device, on_start, on_epoch
        self._artifacts: object | Path | None = _UNSET  # the artifact folder, found at the first trial
        self._batch_size: int | None = None  # of the trial running now
        self._checkpoint: Path | None = None  # of the trial running now
        self.trial_number: int | None = None  # the trial running now, or the last one
        self._assignment: list[int] | None = None  # a cv_folds study's folds, read once

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_number = trial.number
        interrupted = False  # then the checkpoint outlives the trial (its retry resumes from it), and no log is kept
        with trial_log.capture() as captured:
            try:
                return self._run(trial)
            except KeyboardInterrupt:  # SIGINT or SIGTERM: the worker is being stopped
                interrupted = True
                trial.set_user_attr("reason", "interrupted")
                raise
            except StoreFault:  # nothing more can be written: the trial stays RUNNING and resumes from its checkpoint
                interrupted = True
                raise
            except (optuna.TrialPruned, Diverged):
                raise
            except Exception as err:  # recorded with the trial; Optuna marks it FAIL
                captured.traceback()
                if not is_out_of_memory(err):
                    trial.set_user_attr("reason", f"{type(err).__name__}: {err}"[:1000])
                    raise
                reason = f"CUDA out of memory at batch_size {self._batch_size}"
            finally:
                if not interrupted:
                    self._forget_checkpoint()
                    self._upload_log(trial, captured)
        # Out of the except block, the error and its traceback are gone, and with them the frames that held the
        # trial's model, optimizer state and activations: free them now, so the next trial finds the card empty.
        release_memory()
        trial.set_user_attr("reason", reason)
        raise OutOfMemory(reason)

    def _run(self, trial: optuna.Trial) -> float:
        if self.on_start is not None:
            self.on_start(trial.number)  # the supervisor must know which trial to fail if this process dies
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", engine.device_label(engine.resolve_device(self.device)))
        cfg = suggest_config(self.spec, trial)
        self._batch_size = cfg.batch_size
        trial.set_user_attr("config", cfg.to_dict())  # device 'auto': the exported file runs anywhere
        resume = self._resume(trial, cfg.to_dict())
        pruned = False

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            nonlocal pruned
            value = metrics[self.spec.metric]
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, cfg.epochs, value, metrics["images_per_second"])
            if self.spec.multi:  # Optuna takes no intermediate values of a multi-objective trial, and prunes none
                return False
            if math.isfinite(value):
                trial.report(value, epoch)
            # After the last epoch there is nothing left to save: the trial completes, whatever the pruner says
            # (a median pruner would otherwise mark a fully trained trial PRUNED and hide its value from the study).
            pruned = epoch < cfg.epochs and trial.should_prune()
            return pruned

        if self.spec.cv_folds is not None:
            result = engine.fit_folds(cfg.replace(device=self.device), self._folds(trial), on_epoch=on_epoch)
        else:
            result = engine.fit(cfg.replace(device=self.device), on_epoch=on_epoch, checkpoint=self._checkpoint,
                                resume=resume)
        if result.folds is not None:  # each fold's validation values at the kept epoch, and its curve
            trial.set_user_attr("cv_folds", result.folds)
        trial.set_user_attr("params", result.params)
        own = result.trained
        trial.set_user_attr("epochs_run", len(own))
        if own:
            trial.set_user_attr("epoch_seconds", round(sum(h["seconds"] for h in own) / len(own), 3))
            trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
        outcome = "diverged" if result.outcome == "diverged" else "pruned" if pruned else "complete"
        self._upload(trial, result, outcome)
        if result.outcome == "diverged":
            trial.set_user_attr("reason", result.reason)
            raise Diverged(result.reason)
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)}")
        values = self._values(trial, result)
        if self.spec.keep_best_weights:
            self._keep_weights(trial, result, cfg.to_dict(), values)
        return values if self.spec.multi else values[0]

    def _folds(self, trial: optuna.Trial) -> list[int]:
        """The study's folds, as stored with its definition when it was created (supervisor.ensure_study); made
        from the spec for a study created without them (a study object made in code)."""
        if self._assignment is None:
            stored = (trial.study.user_attrs.get("definition") or {}).get("cv_folds") or {}
            self._assignment = stored.get("assignment") or folds.make(self.spec)["assignment"]
        return self._assignment

    def _values(self, trial: optuna.Trial, result: engine.FitResult) -> list[float]:
        """The trial's value of each objective (search/hpo/goals.py); latency_ms is measured here, once."""
        values = []
        for metric, _ in self.spec.objectives:
            if metric == "params":
                value = float(result.params)
            elif metric == "epoch_seconds":  # every epoch of the run, those of a stopped run it resumed too
                value = sum(h["seconds"] for h in result.history) / len(result.history)
            elif metric == "latency_ms":
                value = result.trainer.latency_ms()
                trial.set_user_attr("latency_ms", round(value, 4))
            else:
                value = result.best[metric]
            values.append(value)
        return values

    def _keep_weights(self, trial: optuna.Trial, result: engine.FitResult, config: dict,
                      values: list[float]) -> None:
        """The best epoch's weights, as the artifact ``trial-N-model.pt`` (the format of `search train`'s model.pt),
        when this trial completes as the best so far (several objectives: not dominated by a complete trial): a
        trial that is not the best now never becomes the best later, so only the improvements are kept."""
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        others = [t.values for t in done if t.values is not None]  # this one is still running: not among them
        folder = self._folder(trial)
        if folder is None:
            return
        if self.spec.multi:
            if goals.dominated(values, others, self.spec.directions):
                return
        elif others and (values[0] <= max(v[0] for v in others)):
            return
        try:
            artifacts.upload_model(trial, folder, result.model.state_dict(), config)
        except Exception as err:  # never at the cost of the trial's result
            _store_failed(err)
            log.warning("trial %d: its weights could not be kept in %s: %s", trial.number, folder, err)


    def _folder(self, trial: optuna.Trial) -> Path | None:
        if self._artifacts is _UNSET:
            self._artifacts = artifacts.artifact_dir(artifacts.storage_url(trial.storage))
        return self._artifacts if isinstance(self._artifacts, Path) else None

    def _resume(self, trial: optuna.Trial, config: dict) -> dict | None:
        """Where this trial checkpoints its epochs; the state to resume from when it retries a stopped trial.

        A retry (search/hpo/storage.py: retry_once) takes over the checkpoint of the trial it retries, by renaming
        it: if the retry is stopped too, its own retry finds it. One that cannot be used is reported in one line
        and the retry starts from epoch 1.
        """
        folder = self._folder(trial)
        self._checkpoint = checkpoint_path(folder, self.spec.name, trial.number) if folder is not None else None
        origin = trial.user_attrs.get("retry_of")
        if origin is None:
            return None
        trial.set_user_attr("resumed_from_trial", origin)
        old = checkpoint_path(folder, self.spec.name, origin) if folder is not None else None
        state = None
        if old is not None and self._checkpoint is not None and old.exists():
            old.replace(self._checkpoint)
            try:
                state = checkpoint.load(self._checkpoint, config)
            except checkpoint.CheckpointError as err:
                log.warning("trial %d: %s; it starts again from epoch 1", trial.number, err)
                trial.set_user_attr("resume_note", str(err))
        trial.set_user_attr("resumed_at_epoch", state["epoch"] + 1 if state else 1)
        return state

    def _forget_checkpoint(self) -> None:
        try:
            if self._checkpoint is not None:
                self._checkpoint.unlink(missing_ok=True)
        except OSError:  # the folder could not be written either: there is nothing to delete
            pass

    def _upload_log(self, trial: optuna.Trial, captured: trial_log.TrialLog) -> None:
        folder = self._folder(trial)
        if folder is None:
            return
        try:
            artifacts.upload_text(trial, folder, f"trial-{trial.number}-log.txt", captured.text())
        except Exception as err:  # as for the learning curve: never at the cost of the trial's result
            _store_failed(err)
            log.warning("trial %d: its log could not be saved to %s: %s", trial.number, folder, err)

    def _upload(self, trial: optuna.Trial, result: engine.FitResult, outcome: str) -> None:
        """Once per trial, after training: its files for the dashboard. Never fails the trial."""
        folder = self._folder(trial)
        if folder is None or not result.history:
            return
        try:
            confusion = names = None
            if outcome == "complete" and result.folds is None:  # a cv trial has no one model to show
                # The kept (best) epoch's weights are loaded; one more pass over the validation split, once per
                # trial, costs far less than keeping every epoch's predictions inside the training loop.
                trainer = result.trainer
                _, scores = trainer.evaluate_with_scores(trainer.data.val)
                confusion = metrics.class_results(trainer.data.val.labels, scores, trainer.data.info.task)["confusion"]
                from search.train.data import class_names
                names = class_names(self.spec.dataset, scores.shape[1])
            artifacts.upload_trial_files(trial, folder, history=result.history, outcome=outcome,
                                         metric=self.spec.metric, max_epochs=self.spec.epochs,
                                         best_epoch=result.best_epoch, confusion=confusion, class_names=names)
        except Exception as err:  # a full disk or a bad folder must not lose the trial's result
            _store_failed(err)
            log.warning("trial %d: its learning curve could not be saved to %s: %s: %s", trial.number, folder,
                        type(err).__name__, err)


def _store_failed(err: Exception) -> None:
    """A file that cannot be written never fails its trial; a store that failed on the way ends the worker."""
    if isinstance(err, StoreFault):
        raise err


def checkpoint_path(folder: Path, study: str, number: int) -> Path:
    """A trial's checkpoint: in the artifact folder, so that every worker that can reach one reaches the other."""
    return folder / "checkpoints" / study / f"trial-{number}.pt"


class Diverged(RuntimeError):
    """A trial whose loss became NaN or infinite: recorded as FAIL with its reason."""


class OutOfMemory(RuntimeError):
    """A trial that ran out of GPU memory: recorded as FAIL with its reason; the worker goes on."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's out-of-memory error, or cuDNN / cuBLAS failing to allocate (they raise a plain RuntimeError)."""
    if isinstance(err, OUT_OF_MEMORY):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("CUDA out of memory", "CUDNN_STATUS_NOT_ENOUGH_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED"))


def release_memory() -> None:
    """Collect the garbage of a failed trial and hand the CUDA allocator's cached blocks back to the card."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
