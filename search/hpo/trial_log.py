"""Each trial's log: what its run logged, the warnings it raised, and the full traceback when it failed.

Workers keep Optuna and the libraries quiet (search/quiet.py), so this file is where a failure's details live:
it is uploaded as the artifact ``trial-N-log.txt`` (the dashboard shows it with the trial) and
`search status --study S --trial N` prints its last lines. A worker that dies during a trial has its traceback
added there too; one that dies outside any trial, in search-worker-<id>.log (`record_crash`).
"""
from __future__ import annotations

import io
import logging
import traceback
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import TrialState

from search.errors import write_log

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TrialLog:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def traceback(self) -> None:
        """Add the traceback of the exception being handled."""
        self.buffer.write(traceback.format_exc())

    def text(self, extra: str = "") -> str:
        """What was logged, then ``extra`` (a member's own traceback, in a pack's shared log)."""
        return self.buffer.getvalue() + extra or "(nothing was logged)\n"


@contextmanager
def capture() -> Iterator[TrialLog]:
    """Collect log records (every logger) and warnings raised inside the block into one TrialLog."""
    log = TrialLog()
    handler = logging.StreamHandler(log.buffer)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # within a trial: every warning, not once per process
            from search import quiet

            quiet.libraries(worker=True)  # ... except those silenced knowingly
            try:
                yield log
            finally:
                for w in caught:
                    log.buffer.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    finally:
        root.removeHandler(handler)


def worker_log_name(worker: str) -> str:
    """The log of a worker that failed outside any trial, in the artifact folder: search-worker-<host>-<pid>.log."""
    return f"search-worker-{worker.replace(':', '-')}.log"


def record_crash(text: str, *, study: optuna.Study | None, trial: int | None, folder: Path | None,
                 worker: str) -> Path | None:
    """Put a failed worker's traceback (``text``) where a user looks for it: its trial's log (the artifact
    trial-N-log.txt, which `search status --trial N` shows) while that trial runs, else search-worker-<id>.log in
    the artifact folder (the current folder without one). Returns that file, or None for the trial's log."""
    from search.hpo import artifacts

    header = f"{datetime.now().isoformat(timespec='seconds')} worker {worker} failed\n"
    if study is not None and trial is not None and folder is not None:
        try:
            frozen = study.get_trials(deepcopy=False)[trial]
            if frozen.state == TrialState.RUNNING:
                # A FrozenTrial's artifact needs the storage; Optuna keeps a study's as the private _storage.
                artifacts.upload_text(frozen, folder, f"trial-{trial}-log.txt", header + text, storage=study._storage)
                return None
        except Exception:  # the store or the folder is what failed: the worker's own file below
            pass
    name = worker_log_name(worker)
    return write_log(folder, name, header + text) or (folder or Path.cwd()) / name
