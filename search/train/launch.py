"""`search train`: one run, N seeds (one after another, or in parallel over --devices), or the evaluation of an
ensemble folder, nothing trained. The command line only prints what this returns and tells."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search import interrupt
from search.errors import Interrupted, SearchError
from search.train import config, engine, ensemble, replicates

OnRun = Callable[[Path, dict[str, Any]], None]


@dataclass(frozen=True)
class Done:
    kind: str  # "run", "seeds" or "ensemble"
    out: Path
    result: dict[str, Any]  # the run's or the ensemble's metrics.json; the summary.json of --seeds

    def line(self) -> str:
        """The line that ends `search train` (a lone run has said its own: `run_line`)."""
        m = self.result
        if self.kind == "ensemble":
            each = replicates.mean_sd([e["test_acc"] for e in m["members"]])
            spread = f" ± {each['sd']:.4f}" if each["sd"] is not None else ""
            return (f"{m['dataset']} {m['architecture']}: test_acc {m['test_acc']:.4f} test_auc {m['test_auc']:.4f} "
                    f"(val_acc {m['val_acc']:.4f}; its members' test_acc {each['mean']:.4f}{spread}; "
                    f"{m['seconds']:.1f} s on {m['device']}) -> {self.out}")
        seeds = len(m["seeds"])
        sd = lambda k: f" ± {m[k]['sd']:.4f}" if m[k]["sd"] is not None else ""  # noqa: E731
        e = m.get("ensemble")
        both = (f"; seed ensemble (mean of the {seeds} runs' probabilities): test_acc {e['test_acc']:.4f} test_auc "
                f"{e['test_auc']:.4f}" if e else "")
        return (f"{m['dataset']} {m['architecture']}, {seeds} seeds: test_acc {m['test_acc']['mean']:.4f}"
                f"{sd('test_acc')} test_auc {m['test_auc']['mean']:.4f}{sd('test_auc')} (mean ± sample sd){both} "
                f"-> {self.out / 'summary.json'}")


def run_line(m: dict[str, Any], folder: Path, *, seeded: bool) -> str:
    """The line of one finished run (of --seeds: ``seeded``, naming its seed)."""
    seed = f" seed {m['seed']}" if seeded else ""
    return (f"{m['dataset']} {m['architecture']}{seed}: test_acc {m['test_acc']:.4f} test_auc {m['test_auc']:.4f} "
            f"(best epoch {m['best_epoch']}/{m['epochs']}, val_acc {m['val_acc']:.4f}, {m['params']:,} params, "
            f"{m['seconds']:.1f} s on {m['device']}) -> {folder}")


def run(path: Path, out: Path | None, *, epochs: int | None, device: str | None, seeds: int | None,
        devices: str | None, on_run: OnRun) -> Done:
    """Train ``path`` (a TrainConfig file) into ``out``, or evaluate it when it is an ensemble; ``on_run`` hears of
    each run as it finishes (once for a lone run, once per seed)."""
    if ensemble.is_ensemble(path):
        return _evaluate(path, out, epochs=epochs, device=device, seeds=seeds, devices=devices)
    if devices is not None and seeds is None:
        raise SearchError("--devices needs --seeds N: it spreads the seeds over one process per device; "
                          "a single run takes --device")
    cfg = config.load(path, epochs=epochs, device=device)
    if out is None:
        out = Path("runs") / f"{cfg.dataset}-{cfg.architecture}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if seeds is None:
            return Done("run", out, _train_one(cfg, out, on_run))
        if devices is not None:
            from search.train import parallel

            return Done("seeds", out, parallel.train_seeds(cfg, out, seeds, devices, on_run=on_run))
        return Done("seeds", out, replicates.train_seeds(cfg, out, seeds, on_run=on_run))
    except KeyboardInterrupt:  # interrupt.Stop from the training loop
        kept = f"the seeds that finished are kept in {out}" if seeds is not None else "nothing was saved"
        raise Interrupted(f"interrupted ({interrupt.requested()}): the run in progress was stopped; {kept}") from None


def _train_one(cfg: config.TrainConfig, out: Path, on_run: OnRun) -> dict[str, Any]:
    replicates.refuse_finished(out / "metrics.json")
    metrics = engine.train(cfg, out)
    on_run(out, metrics)
    return metrics


def _evaluate(path: Path, out: Path | None, *, epochs: int | None, device: str | None, seeds: int | None,
              devices: str | None) -> Done:
    used = [name for name, v in (("--epochs", epochs), ("--seeds", seeds), ("--devices", devices)) if v is not None]
    if used:
        raise SearchError(f"{path} is an ensemble: `search train` evaluates it, training nothing, so {used[0]} does "
                          f"not apply (valid with an ensemble: --out, --device)")
    out = out or Path("runs") / f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"
    replicates.refuse_finished(out / "metrics.json")
    return Done("ensemble", out, ensemble.evaluate(path, out, device))
