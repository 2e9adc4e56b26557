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
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import TrialState

from search.errors import StoreFault
from search.hpo import artifacts, folds, goals, packs, trial_log
from search.hpo.studies import StudySpec, suggest_config
from search.hpo.urls import worker_id
from search.train import checkpoint, engine, metrics
from search.train.config import TrainConfig

log = logging.getLogger("search")
_UNSET = object()
# torch >= 2.5 names the accelerator-independent class; torch.cuda.OutOfMemoryError is the same class there.
OUT_OF_MEMORY: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass
class Member:
    """One trial of what a worker trains at once: a lone trial, or a member of a pack (search/hpo/packs.py)."""

    trial: optuna.Trial
    cfg: TrainConfig | None = None
    checkpoint: Path | None = None  # where it checkpoints its epochs
    resume: dict | None = None  # the state it resumes from (a retry)
    pruned: bool = False
    value: Any = None  # its value (several objectives: the list), once it completed
    error: BaseException | None = None  # what ended it otherwise
    traceback: str = ""  # of that error, for its log


class Objective:
    """Callable for Optuna: trains one trial on ``device`` and returns its best validation metric (several
    objectives: the list of their values). With ``size`` above 1, the trial Optuna hands it is the first of a pack:
    it asks the others itself (search/hpo/packs.py), trains them all as one fused model, and tells the others'
    outcomes to the study (``on_done`` hears each), the first's as for a lone trial. Lone and packed trials take the
    same steps below (prepare, train, finish, settle); only the training call differs."""

    def __init__(self, spec: StudySpec, device: str, on_start: Callable[[int], None] | None = None,
                 on_epoch: Callable[[int, int, int, float, float, bool], None] | None = None,
                 on_pack: Callable[[list[int]], None] | None = None,
                 on_done: Callable[[optuna.trial.FrozenTrial], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        """``on_start(number)``: a trial starts; ``on_epoch(number, epoch, epochs, value, images_per_second,
        pruned)``: it finished an epoch (a supervised worker tells its supervisor both); ``on_pack(numbers)``: the
        trials of the pack now starting, the first's included; ``on_done(trial)``: a pack's member other than the first
        ended (Optuna's callbacks hear of the first); ``on_note(line)``: a line for the terminal."""
        self.spec, self.device, self.on_start, self.on_epoch = spec, device, on_start, on_epoch
        self.on_pack, self.on_done, self.on_note = on_pack, on_done, on_note
        # Trials to train at once: a number (a supervised worker's ticket), or asked of a callable per pack.
        self.size: int | Callable[[optuna.Study], int] = 1
        self._artifacts: object | Path | None = _UNSET  # the artifact folder, found at the first trial
        self._assignment: list[int] | None = None  # a cv_folds study's folds, read once
        self._said: set[str] = set()  # the reasons this worker ran a pack's first trial alone, said once each
        self.trial_numbers: list[int] = []  # the trials running now, or the last ones

    @property
    def trial_number(self) -> int | None:
        """The (first) trial running now, or the last one."""
        return self.trial_numbers[0] if self.trial_numbers else None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.trial_numbers = [trial.number]
        first = Member(trial)
        members = [first]
        with trial_log.capture() as captured, packs.heartbeats(trial.study, []) as beating:
            self._attempt([first], lambda: self._prepare(first))
            size = self.size(trial.study) if callable(self.size) else self.size
            if size > 1 and first.error is None:
                self._attempt([first], lambda: members.extend(self._others(first, size)))
                for m in members[1:]:
                    beating.enter_context(packs.beat(trial.study, m.trial))
                    self._attempt([m], lambda m=m: self._prepare(m))
            live = [m for m in members if m.error is None]
            if live and not _stopped(members):
                results = self._attempt(live, lambda: self._train(live)) or []
                for m, result in zip(live, results):
                    if not _stopped(members):
                        self._attempt([m], lambda m=m, r=result: self._finish(m, r))
                del results
            for m in members:
                self._settle(m, captured, stop=_stopped(members))
            for m in members[1:]:
                self._tell(m)
        error = first.error
        first.error = None  # its frames (the model, the optimizer, activations) go with the exception once raised
        if error is not None:
            raise error
        return first.value

    def _attempt(self, members: list[Member], step: Callable[[], Any]) -> Any:
        """Run one step of ``members``; an error ends each of them (never the worker), with its traceback kept."""
        try:
            return step()
        except BaseException as err:  # noqa: BLE001 (each member's outcome is settled below, as Optuna would)
            text = traceback.format_exc()
            for m in members:
                m.error, m.traceback = err, text
            return None

    def _others(self, first: Member, size: int) -> list[Member]:
        """The pack's other members, asked of the study; none when the first must run alone (said once)."""
        why = packs.alone(self.spec, first.trial, first.cfg)  # type: ignore[arg-type]
        if why is not None and why not in self._said and self.on_note is not None:
            self._said.add(why)
            self.on_note(f"worker {worker_id()}: {why}")
        others = [] if why else packs.ask_members(first.trial.study, self.spec, first.trial, size)
        self.trial_numbers += [t.number for t in others]
        if self.on_pack is not None:
            self.on_pack(list(self.trial_numbers))  # the whole pack: the tickets beyond it go back
        return [Member(t) for t in others]

    def _prepare(self, m: Member) -> None:
        trial = m.trial
        if self.on_start is not None and m.trial.number == self.trial_numbers[0]:
            self.on_start(trial.number)  # the supervisor must know which trial to fail if this process dies
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", engine.device_label(engine.resolve_device(self.device)))
        m.cfg = suggest_config(self.spec, trial)
        trial.set_user_attr("config", m.cfg.to_dict())  # device 'auto': the exported file runs anywhere
        m.resume = self._resume(m, m.cfg.to_dict())

    def _reporter(self, m: Member) -> Callable[[int, dict[str, float]], bool]:
        trial, cfg = m.trial, m.cfg
        assert cfg is not None

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            value = metrics[self.spec.metric]
            # Optuna takes no intermediate values of a multi-objective trial, and prunes none
            if not self.spec.multi:
                if math.isfinite(value):
                    trial.report(value, epoch)
                # After the last epoch there is nothing left to save: the trial completes, whatever the pruner says
                # (a median pruner would otherwise mark a fully trained trial PRUNED and hide its value from the study).
                m.pruned = epoch < cfg.epochs and trial.should_prune()
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, cfg.epochs, value, metrics["images_per_second"], m.pruned)
            return m.pruned

        return on_epoch

    def _train(self, members: list[Member]) -> list[engine.FitResult]:
        """The one training call: engine.fit for a trial alone, the fused fit_pack for a pack's members."""
        cfgs = [m.cfg.replace(device=self.device) for m in members]  # type: ignore[union-attr]
        if len(members) == 1:
            m = members[0]
            if self.spec.cv_folds is not None:
                return [engine.fit_folds(cfgs[0], self._folds(m.trial), on_epoch=self._reporter(m))]
            return [engine.fit(cfgs[0], on_epoch=self._reporter(m), checkpoint=m.checkpoint, resume=m.resume)]
        for m in members:
            m.trial.set_user_attr("pack", packs.attr([x.trial.number for x in members]))
        from search.train import pack as fusion

        return fusion.fit_pack(cfgs, on_epoch=[self._reporter(m) for m in members],
                               checkpoints=[m.checkpoint for m in members], resumes=[m.resume for m in members])

    def _finish(self, m: Member, result: engine.FitResult) -> None:
        trial = m.trial
        if result.folds is not None:  # each fold's validation values at the kept epoch, and its curve
            trial.set_user_attr("cv_folds", result.folds)
        trial.set_user_attr("params", result.params)
        own = result.trained
        trial.set_user_attr("epochs_run", len(own))
        if own:
            trial.set_user_attr("epoch_seconds", round(sum(h["seconds"] for h in own) / len(own), 3))
            trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
        outcome = "diverged" if result.outcome == "diverged" else "pruned" if m.pruned else "complete"
        self._upload(trial, result, outcome)
        if result.outcome == "diverged":
            trial.set_user_attr("reason", result.reason)
            raise Diverged(result.reason)
        if m.pruned:
            raise optuna.TrialPruned(f"pruned at epoch {len(result.history)}")
        values = self._values(trial, result)
        if self.spec.keep_best_weights:
            self._keep_weights(trial, result, m.cfg.to_dict(), values)  # type: ignore[union-attr]
        m.value = values if self.spec.multi else values[0]

    def _settle(self, m: Member, captured: trial_log.TrialLog, *, stop: BaseException | None) -> None:
        """What a trial's end records, whatever ended it: its reason, its log, its checkpoint forgotten. A stop
        (SIGINT/SIGTERM, or the store failing) ends every member still going: its checkpoint outlives it (its retry
        resumes from it), and no log is kept."""
        trial, err = m.trial, m.error
        if stop is not None and (err is None or isinstance(err, (KeyboardInterrupt, StoreFault))):
            m.error = err = stop
        if isinstance(err, KeyboardInterrupt):  # SIGINT or SIGTERM: the worker is being stopped
            trial.set_user_attr("reason", "interrupted")
            return
        if isinstance(err, StoreFault):  # nothing more can be written: it stays RUNNING and resumes from its checkpoint
            return
        if err is not None and not isinstance(err, (optuna.TrialPruned, Diverged)):  # Optuna marks it FAIL
            if is_out_of_memory(err):
                reason = f"CUDA out of memory at batch_size {m.cfg.batch_size if m.cfg else '?'}"
                m.error = err = OutOfMemory(reason)
            else:
                reason = f"{type(err).__name__}: {err}"[:1000]
        else:
            reason = None
        self._forget_checkpoint(m)
        self._upload_log(trial, captured.text(m.traceback if reason is not None else ""))
        if isinstance(m.error, OutOfMemory):
            # The error and its traceback are gone, and with them the frames that held the trial's model, optimizer
            # state and activations: free them now, so the next trial finds the card empty.
            release_memory()
        if reason is not None:
            trial.set_user_attr("reason", reason)

    def _tell(self, m: Member) -> None:
        """A pack's member other than the first: its outcome to the study, as Optuna's optimize tells the first's."""
        err = m.error
        if isinstance(err, StoreFault):
            return
        study = m.trial.study
        if err is None:
            frozen = study.tell(m.trial, m.value)
        else:
            state = TrialState.PRUNED if isinstance(err, optuna.TrialPruned) else TrialState.FAIL
            frozen = study.tell(m.trial, state=state)
        m.error = None
        if self.on_done is not None and not isinstance(err, KeyboardInterrupt):  # stopped, not ended: no line
            self.on_done(frozen)

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

    def _resume(self, m: Member, config: dict) -> dict | None:
        """Where this trial checkpoints its epochs; the state to resume from when it retries a stopped trial.

        A retry (search/hpo/storage.py: retry_once) takes over the checkpoint of the trial it retries, by renaming
        it: if the retry is stopped too, its own retry finds it. One that cannot be used is reported in one line
        and the retry starts from epoch 1.
        """
        trial = m.trial
        folder = self._folder(trial)
        m.checkpoint = checkpoint_path(folder, self.spec.name, trial.number) if folder is not None else None
        origin = trial.user_attrs.get("retry_of")
        if origin is None:
            return None
        trial.set_user_attr("resumed_from_trial", origin)
        old = checkpoint_path(folder, self.spec.name, origin) if folder is not None else None
        state = None
        if old is not None and m.checkpoint is not None and old.exists():
            old.replace(m.checkpoint)
            try:
                state = checkpoint.load(m.checkpoint, config)
            except checkpoint.CheckpointError as err:
                log.warning("trial %d: %s; it starts again from epoch 1", trial.number, err)
                trial.set_user_attr("resume_note", str(err))
        trial.set_user_attr("resumed_at_epoch", state["epoch"] + 1 if state else 1)
        return state

    def _forget_checkpoint(self, m: Member) -> None:
        try:
            if m.checkpoint is not None:
                m.checkpoint.unlink(missing_ok=True)
        except OSError:  # the folder could not be written either: there is nothing to delete
            pass

    def _upload_log(self, trial: optuna.Trial, text: str) -> None:
        folder = self._folder(trial)
        if folder is None:
            return
        try:
            artifacts.upload_text(trial, folder, f"trial-{trial.number}-log.txt", text)
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


def _stopped(members: list[Member]) -> BaseException | None:
    """A stop signal or the store's failure met by any member: it ends the whole pack."""
    return next((m.error for m in members if isinstance(m.error, (KeyboardInterrupt, StoreFault))), None)


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
