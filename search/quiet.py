"""What `search` silences of its libraries: knowingly, and in this one place.

Every `search` process calls :func:`libraries` before its work: the command (the CLI group) and each worker it
spawns (a spawned interpreter starts with Python's default warning filters and Optuna's default logging).

- Optuna's ExperimentalWarning: we use experimental features on purpose (the heartbeat with
  RetryHeartbeatStaleTrialCallback, TPE's ``group``, the gRPC storage proxy); a user cannot act on it.
- Inductor's note that TF32 is off (``compile: true`` with ``precision: fp32``): that is what fp32 means.
- Optuna's INFO lines ("Trial 3 finished with value ...") in the command, and all but its errors in workers: our
  own progress lines say what happens, and the lines of N workers would bury them. A failed trial's reason is
  kept in the trial (``reason``).
- SQLAlchemy's logger: a storage error reaches the user as our one line.
- Optuna's "Caught an error from sqlalchemy ... Falling back to a slower alternative" (its RDB storage, when a
  trial query fails, e.g. on a connection the server dropped): Optuna queries again at once, and a second failure
  raises, which search/hpo/faults.py waits out or turns into our one line. The warning itself (a SQL statement and
  its parameters) told a user nothing to do; tests/test_outage.py drops connections and saw it reach the terminal.

Our own log records ("search" logger) reach the terminal as one line each (`our_log`), from workers too.

Deprecation warnings are not silenced: they are fixed (the non-deprecated API is used).
"""
from __future__ import annotations

import logging
import warnings


class OneLine(logging.Formatter):
    """Our own log records, as the terminal shows them: "warning: ..."."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def our_log() -> logging.Logger:
    """The "search" logger, writing one line per record to stderr (once per process)."""
    log = logging.getLogger("search")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(OneLine())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


def libraries(*, worker: bool = False) -> None:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*")
    optuna.logging.set_verbosity(optuna.logging.ERROR if worker else optuna.logging.WARNING)
    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
    rdb = logging.getLogger("optuna.storages._rdb.storage")
    if not any(isinstance(f, _RetriedQuery) for f in rdb.filters):
        rdb.addFilter(_RetriedQuery())
    if worker:
        our_log()


class _RetriedQuery(logging.Filter):
    """Drops Optuna's note that it retries a failed trial query a slower way (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Caught an error from sqlalchemy")
