"""The `search` command line: parse, call one function, print. No logic lives here."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from search import __version__


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="search")
def main() -> None:
    """Hyperparameter search for image classifiers on MNIST and MedMNIST, built on Optuna."""
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine())
    log = logging.getLogger("search")
    if not log.handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)


@main.command()
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json, model.pt and config.yaml (default: a new folder under runs/).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the config's epochs.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (overrides the config's device).")
def train(config_file: Path, out: Path | None, epochs: int | None, device: str | None) -> None:
    """Train CONFIG.yaml, keep the best validation epoch and report test ACC and AUC."""
    from search import config, engine
    from search.errors import SearchError

    cfg = config.load(config_file, epochs=epochs, device=device)
    if out is None:
        out = Path("runs") / f"{cfg.dataset}-{cfg.architecture}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "metrics.json").exists():
        raise SearchError(f"{out} already holds a finished run (metrics.json); choose another --out")
    m = engine.train(cfg, out)
    click.echo(f"{cfg.dataset} {cfg.architecture}: test_acc {m['test_acc']:.4f} test_auc {m['test_auc']:.4f} "
               f"(best epoch {m['best_epoch']}/{m['epochs']}, val_acc {m['val_acc']:.4f}, {m['params']:,} params, "
               f"{m['seconds']:.1f} s on {m['device']}) -> {out}")
