"""Ensembles: several trained runs that predict together by the mean of their class probabilities.

Three places use them:

- `search train CONFIG --seeds N`: the seed ensemble's test ACC and AUC, beside the members' mean ± sd, computed
  from the files the runs wrote (each run's test_predictions.csv keeps its probabilities), into summary.json;
- `search export --rerank K --seeds N --ensemble M`: an ensemble folder of the M best reranked trials' runs (M x N
  members: their configs and kept weights; nothing is retrained), evaluated at once;
- `search train ENSEMBLE_DIR` (an evaluation, no training) and `search predict ENSEMBLE_DIR INPUT`.

An ensemble folder:

    DIR/ensemble.yaml               what it is: dataset, task, the members (weights paths relative to DIR and
                                    where each came from), how they combine (the mean of the probabilities)
    DIR/members/NAME/model.pt       each member's kept weights and TrainConfig (`search train`'s model.pt)
    DIR/members/NAME/config.yaml    the same TrainConfig, to read
    DIR/metrics.json                the ensemble's validation and test metrics, as a run's (`search report --run`)
    DIR/test_predictions.csv        each test image's class, prediction and mean probabilities, as a run's

The mean of probabilities (soft voting) rather than a majority vote: it keeps the AUC (a vote has no scores to
rank) and breaks ties by confidence. Multi-label tasks average the per-label sigmoid probabilities the same way,
and MedMNIST's rule (each label > 0.5) predicts from the mean.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from search.errors import SearchError
from search.train import config, engine, owninfo, prediction_files
from search.train.config import TrainConfig, atomic_write
from search.train.data import OwnOptions, get_info, load
from search.train.metrics import class_results, evaluate_scores, predict

FILE = "ensemble.yaml"
COMBINE = "mean of the members' class probabilities"


# --- a member: one run's kept weights ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    cfg: TrainConfig
    state: dict[str, torch.Tensor]
    mean: list[float] | None  # the training split's per-channel mean and std (None in an older model.pt)
    std: list[float] | None
    weights: Path

    def net(self, device: torch.device) -> torch.nn.Module:
        """The network with its kept weights on ``device``, in evaluation mode (built as the engine trains it)."""
        model = engine.build_net(self.cfg.replace(pretrained=False), get_info(self.cfg.dataset))  # weights follow
        try:
            model.load_state_dict(self.state)
        except RuntimeError as err:
            raise SearchError(f"{self.weights}: the weights do not fit {self.cfg.architecture} "
                              f"({str(err).splitlines()[0][:160]})") from None
        return model.to(device=device, memory_format=torch.channels_last).eval()

    def stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Its normalisation: the statistics kept in model.pt, else (older runs) those of the training split."""
        if self.mean is None or self.std is None:
            data = load(self.cfg.dataset, self.cfg.data_dir, device, self.cfg.size, OwnOptions.of(self.cfg))
            return data.mean, data.std
        as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
        return as_t(self.mean), as_t(self.std)

    def probabilities(self, images: torch.Tensor, device: torch.device,
                      net: torch.nn.Module | None = None) -> torch.Tensor:
        """(N, K) class probabilities of uint8 (N, C, S, S) ``images``, by the engine's one prediction path (the
        run's normalisation, precision and any test-time views its config names). ``net``: self.net(device), built
        once by a caller that scores several splits."""
        dtype = engine.resolve_precision(self.cfg.precision, device)
        autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
        mean, std = self.stats(device)
        _, scores = engine.score(net or self.net(device), images.to(device), self.cfg, get_info(self.cfg.dataset),
                                 mean, std, autocast)
        return scores.float()


def load_member(weights: Path) -> Member:
    """A `search train` model.pt: read as data (weights_only=True); anything unusable is one line."""
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SearchError(f"{weights} not found") from None
    except Exception as err:  # truncated, not a torch file, or holding code: refused
        text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise SearchError(f"{weights} cannot be read as `search train` weights ({text})") from None
    if not isinstance(saved, dict) or "state_dict" not in saved or "config" not in saved:
        raise SearchError(f"{weights} is not a `search train` model.pt (it needs 'state_dict' and 'config')")
    owninfo.remember(saved)  # before the config's check reads the dataset: own data's source may be elsewhere
    cfg = config.from_dict(saved["config"], source=str(weights))
    return Member(cfg, saved["state_dict"], saved.get("mean"), saved.get("std"), weights)


# --- what a folder holds ------------------------------------------------------------------------------------------


def is_ensemble(path: Path) -> bool:
    """Whether `search train PATH` names an ensemble: its folder, or its ensemble.yaml."""
    return (path.is_dir() and (path / FILE).is_file()) or (path.is_file() and path.name == FILE)


def read_members(path: Path) -> tuple[list[Member], Path | None]:
    """The members that predict for ``path``, and the ensemble folder (None for a run or a --seeds folder):
    a run folder (its model.pt: an ensemble of one), a `--seeds` folder (every seed-S/model.pt: the seed
    ensemble) or an ensemble folder (ensemble.yaml). Anything else is one line."""
    if path.is_file() and path.name == FILE:
        path = path.parent
    if not path.is_dir():
        raise SearchError(f"{path} is not a folder; pass a `search train` run folder (model.pt), a `--seeds` folder, "
                          f"or an ensemble folder (ensemble.yaml, from `search export --ensemble`)")
    if (path / FILE).is_file():
        return [load_member(w) for w in _weights_of(path)], path
    if (path / "model.pt").is_file():
        return [load_member(path / "model.pt")], None
    seeds = sorted(path.glob("seed-*/model.pt"), key=lambda p: int(p.parent.name[5:]) if p.parent.name[5:].isdigit()
                   else math.inf)
    if seeds:
        return [load_member(w) for w in seeds], None
    raise SearchError(f"{path} holds no model.pt (a `search train` run folder), no seed-S/model.pt (a `--seeds` "
                      f"folder) and no {FILE} (an ensemble folder from `search export --ensemble`)")


def _weights_of(folder: Path) -> list[Path]:
    spec = config.read_yaml(folder / FILE)
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) and isinstance(m.get("weights"),
                                                                                                    str)
                                                               for m in members):
        raise SearchError(f"{folder / FILE}: 'members' must be a non-empty list of mappings, each with 'weights' (a "
                          f"path to a model.pt, relative to the folder)")
    return [folder / m["weights"] for m in members]


def check_alike(members: list[Member]) -> None:
    """Members predict together only on one dataset (the same classes)."""
    datasets = sorted({m.cfg.dataset for m in members})
    if len(datasets) > 1:
        raise SearchError(f"the ensemble's members were trained on different datasets ({', '.join(datasets)}); "
                          f"an ensemble averages the probabilities of the same classes")


# --- writing an ensemble folder -----------------------------------------------------------------------------------


def write(folder: Path, runs: list[tuple[str, Path, dict[str, Any]]], source: dict[str, Any]) -> Path:
    """An ensemble folder of ``runs`` (name, run folder, notes on where it came from): each run's model.pt and
    config.yaml copied under members/NAME (no retraining), and ensemble.yaml. Refused when the folder already holds
    an ensemble."""
    if (folder / FILE).exists():
        raise SearchError(f"{folder} already holds an ensemble ({FILE}); choose another --ensemble-dir or remove it")
    members = [load_member(run / "model.pt") for _, run, _ in runs]  # each one readable before anything is copied
    check_alike(members)
    listed = []
    for (name, run, notes), member in zip(runs, members):
        where = folder / "members" / name
        where.mkdir(parents=True, exist_ok=True)
        for file in ("model.pt", "config.yaml"):
            atomic_write(where / file, lambda tmp, src=run / file: shutil.copyfile(src, tmp))
        listed.append({"weights": f"members/{name}/model.pt", "architecture": member.cfg.architecture,
                       "seed": member.cfg.seed, "run": str(run), **notes})
    info = get_info(members[0].cfg.dataset)
    spec = {"kind": "ensemble", "dataset": info.name, "task": info.task, "combine": COMBINE, "members": listed,
            "source": source}
    atomic_write(folder / FILE, lambda tmp: tmp.write_text(yaml.safe_dump(spec, sort_keys=False)))
    return folder


# --- evaluating: a run's files for an ensemble ---------------------------------------------------------------------


def evaluate(path: Path, out: Path, device_name: str | None = None) -> dict[str, Any]:
    """`search train ENSEMBLE`: the ensemble's validation and test metrics, written to ``out`` as a run's
    (metrics.json, test_predictions.csv) so that `search report --run` reads it as one. Nothing is trained."""
    start = time.perf_counter()
    members, folder = read_members(path)
    check_alike(members)
    device = engine.resolve_device(device_name or members[0].cfg.device)
    info = get_info(members[0].cfg.dataset)
    splits: dict[str, list[torch.Tensor]] = {"val": [], "test": []}
    labels: dict[str, torch.Tensor] = {}
    params = 0
    for m in members:
        data = load(m.cfg.dataset, m.cfg.data_dir, device, m.cfg.size)
        net = m.net(device)
        params += sum(p.numel() for p in net.parameters())
        for split in splits:
            splits[split].append(m.probabilities(getattr(data, split).images, device, net))
            labels[split] = getattr(data, split).labels
    mean = {s: torch.stack(ps).mean(dim=0) for s, ps in splits.items()}
    val = evaluate_scores(labels["val"], mean["val"], info.task)
    test = evaluate_scores(labels["test"], mean["test"], info.task)
    per_class = class_results(labels["test"], mean["test"], info.task)
    each = [evaluate_scores(labels["test"], p, info.task) for p in splits["test"]]
    archs = sorted({m.cfg.architecture for m in members})
    metrics = {
        "val_acc": val["acc"], "val_auc": val["auc"], "test_acc": test["acc"], "test_auc": test["auc"],
        "test_loss": _loss(labels["test"], mean["test"], info.multi_label),
        "best_epoch": None, "epochs": None, "outcome": "ensemble", "seconds": round(time.perf_counter() - start, 3),
        "params": params,  # all the members' together: what the ensemble holds and runs per image
        "device": str(device), "dataset": info.name,
        "architecture": f"ensemble of {len(members)} ({', '.join(archs)})", "size": members[0].cfg.size,
        "seed": "", "task": info.task, "ensemble": str(folder or path), "combine": COMBINE,
        "members": [{"weights": str(m.weights), "architecture": m.cfg.architecture, "seed": m.cfg.seed,
                     "test_acc": e["acc"], "test_auc": e["auc"]} for m, e in zip(members, each)],
        "test_confusion": per_class["confusion"], "test_per_class_acc": per_class["per_class_acc"],
        "test_class_counts": per_class["class_counts"], "history": [],
    }
    write_run_files(out, metrics, labels["test"], mean["test"])
    return metrics


def write_run_files(out: Path, metrics: dict[str, Any], labels: torch.Tensor, scores: torch.Tensor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = prediction_files.test_text(metrics["dataset"], metrics["task"], labels.cpu().numpy(), scores.cpu().numpy(),
                                 predict(scores, metrics["task"]).cpu().numpy())
    atomic_write(out / "test_predictions.csv", lambda p: p.write_text(text))
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n"))


def _loss(labels: torch.Tensor, scores: torch.Tensor, multi_label: bool) -> float:
    """The ensemble's loss: the cross-entropy of its mean probabilities (BCE per label for multi-label tasks)."""
    p = scores.double().clamp(1e-12, 1 - 1e-12)
    if multi_label:
        return float(torch.nn.functional.binary_cross_entropy(p, labels.double()))
    return float(-p.gather(1, labels.view(-1, 1)).log().mean())


# --- the seed ensemble of `search train --seeds`, from the files on disk ----------------------------------------


def from_runs(runs: list[Path], task: str) -> dict[str, Any] | None:
    """The test ACC and AUC of the mean of the runs' test probabilities (their test_predictions.csv); None when a
    run's file has no probabilities (an older run) or the runs were tested on different images."""
    files = [r / "test_predictions.csv" for r in runs]
    read = [prediction_files.read_test(f) for f in files if f.is_file()]
    if len(read) != len(runs) or any(t.probabilities is None for t in read):
        return None
    if any(t.labels.shape != read[0].labels.shape or not np.array_equal(t.labels, read[0].labels) for t in read):
        return None
    mean = torch.from_numpy(np.mean([t.probabilities for t in read], axis=0))
    labels = torch.from_numpy(read[0].labels)
    scores = evaluate_scores(labels, mean, task)
    single = [evaluate_scores(labels, torch.from_numpy(t.probabilities), task) for t in read]
    return {"members": len(runs), "combine": COMBINE, "test_acc": scores["acc"], "test_auc": scores["auc"],
            "gain_acc": scores["acc"] - statistics.fmean(s["acc"] for s in single)}
