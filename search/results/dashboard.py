"""`search dashboard`: optuna-dashboard on the study store, with each trial's files (search/hpo/artifacts.py)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable
from wsgiref.simple_server import make_server

from search.errors import SearchError
from search.hpo import artifacts
from search.hpo.storage import open_storage
from search.hpo.store import Store, locate
from search.hpo.urls import check_port

ALL_INTERFACES = ("0.0.0.0", "::", "")


def serve(storage: Store | str | None, host: str, port: int, artifacts_dir: Path | None,
          echo: Callable[[str], None]) -> None:
    """Serve optuna-dashboard on ``host:port`` until Ctrl-C (which is how a server is stopped: not an error)."""
    import optuna_dashboard

    where_from = locate(storage)
    store = open_storage(where_from, must_exist=True, heartbeat=False)
    folder = artifacts.artifact_dir(where_from.url, artifacts_dir)
    check_port(host, port)
    if host in ALL_INTERFACES:
        logging.getLogger("search").warning("the dashboard is bound to all interfaces (%s): anyone who can reach "
                                            "this machine can see and change the study", host)
    app = optuna_dashboard.wsgi(store, artifact_store=artifacts.open_store(folder) if folder is not None else None)
    try:
        server = make_server(host, port, app)
    except OSError as err:
        raise SearchError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port") from None
    where = f", trial files in {folder}" if folder is not None else ""
    echo(f"optuna-dashboard for {where_from.masked} at http://{host}:{port}/{where} (Ctrl-C to stop)")
    # wsgiref catches every exception raised while it answers a request, a stop signal's too: served from a thread,
    # so that the signal reaches this one (Python runs handlers in the main thread), waiting here.
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        while serving.is_alive():
            serving.join(0.5)
    except KeyboardInterrupt:  # interrupt.Stop: the command stops at once (search/cli.py)
        echo("dashboard stopped")
