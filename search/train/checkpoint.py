"""A training run's state after an epoch, so that a run that was killed or stopped resumes at the next epoch.

One file per run, overwritten after every epoch (temporary file, fsync, rename: a crash leaves the old file or the
new one, never half of one). It holds everything the next epoch needs to go on exactly as if the run had never
stopped: the model, optimizer, learning-rate schedule and gradient-scaler states, the generator that shuffles and
augments, torch's global generator (dropout), and the run so far: the epoch, the history, the best epoch's
metrics and weights. It is read with ``weights_only=True``: data, never code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from search.train.config import atomic_write

VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used (unreadable, truncated, another version or configuration): one line."""


def save(path: Path, trainer: Any, result: Any, best_state: dict[str, torch.Tensor] | None, epoch: int, *,
         dropout_rng: torch.Tensor | None = None) -> None:
    """``trainer`` and ``result``: the engine's Trainer and FitResult (not imported: the engine imports this).

    ``dropout_rng``: the state of the generator the run's dropout draws from when that is not torch's global one on
    its device (a pack member's own, search/train/pack.py); it is saved where the global one would be, so that the
    run resumes alone or in a pack alike."""
    cuda = trainer.device.type == "cuda"
    cpu_rng = dropout_rng if dropout_rng is not None and not cuda else torch.get_rng_state()
    cuda_rng = (dropout_rng if dropout_rng is not None else torch.cuda.get_rng_state(trainer.device)) if cuda else None
    state = {
        "version": VERSION, "config": _identity(trainer.cfg.to_dict()), "epoch": epoch,
        "history": result.history, "best_epoch": result.best_epoch, "best": result.best, "best_state": best_state,
        "model": {k: _own(v) for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
        "generator": trainer.generator.get_state(), "cpu_rng": cpu_rng, "cuda_rng": cuda_rng,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: _torch_save(state, tmp))


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied when it is a view into a larger storage (a pack member's BatchNorm statistics live in its
    pack's fused buffers): torch.save writes a view's whole storage."""
    whole = tensor.untyped_storage().nbytes()
    return tensor.clone() if whole > tensor.numel() * tensor.element_size() else tensor


def _torch_save(state: dict[str, Any], tmp: Path) -> None:
    try:
        torch.save(state, tmp)
    except RuntimeError as err:  # torch's file writer reports a failed write (a full disk) as a RuntimeError
        fs = os.statvfs(tmp.parent)
        why = "No space left on device" if fs.f_bavail * fs.f_frsize < 1 << 20 else str(err).splitlines()[0]
        raise OSError(f"{why}: {tmp.parent}") from err


def load(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The state saved at ``path`` for the run of ``config`` (a TrainConfig as a dict); CheckpointError if unusable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, unreadable: the run starts again instead
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}{': ' + text if text else ''})"
                              ) from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        found = state.get("version") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {path} has version {found!r}; this version of search reads {VERSION}")
    if state.get("config") != _identity(config):
        raise CheckpointError(f"checkpoint {path} belongs to another configuration")
    return state


def restore(trainer: Any, state: dict[str, Any]) -> None:
    """Put ``trainer`` where it was when ``state`` was saved (the caller restores the history and best epoch)."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])  # moves the state to the parameters' device
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a checkpoint to continue a run: the configuration, wherever and however it runs (graphs
    only decides how the same step is launched; a checkpoint from before the key existed resumes too)."""
    return {k: v for k, v in config.items() if k not in ("device", "data_dir", "graphs")}
