"""Each trial's log: what its run logged, the warnings it raised, and the full traceback when it failed.

Workers keep Optuna and the libraries quiet (search/quiet.py), so this file is where a failure's details live:
it is uploaded as the artifact ``trial-N-log.txt`` (the dashboard shows it with the trial) and
`search status --study S --trial N` prints its last lines.
"""
from __future__ import annotations

import io
import logging
import traceback
import warnings
from contextlib import contextmanager
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TrialLog:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def traceback(self) -> None:
        """Add the traceback of the exception being handled."""
        self.buffer.write(traceback.format_exc())

    def text(self) -> str:
        return self.buffer.getvalue() or "(nothing was logged)\n"


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
