"""Optuna's gRPC storage proxy: one process in front of the RDB store, for very many workers.

Each worker holding its own database connections (a pool per process, heartbeats, full trial reloads for the
sampler) is what limits an RDB store at a few hundred workers. `search proxy --storage URL` runs
:func:`optuna.storages.run_grpc_proxy_server` over the store: the proxy alone talks to the database, through
Optuna's in-process trial cache, and the workers use ``--storage grpc://HOST:PORT``
(:class:`optuna.storages.GrpcStorageProxy`, which caches finished trials on the client side too).

What the proxy does not carry: heartbeats. GrpcStorageProxy is not a heartbeat storage, so a worker that dies
behind the proxy leaves its trial RUNNING (nothing fails it and queues it again, as happens on a direct RDB URL).
`search start` (the supervisor) still marks a dead worker's trial FAIL itself. The proxy is not authenticated
or encrypted: keep it on 127.0.0.1 or a private network. The workers' side (grpc:// URLs) is in storage.py.
"""
from __future__ import annotations

import logging
from typing import Callable

import optuna

from search.errors import SearchError
from search.hpo.storage import open_storage, require_grpc
from search.hpo.urls import check_port, mask


def serve(url: str, *, host: str, port: int, echo: Callable[[str], None]) -> None:
    """`search proxy`: serve the RDB store at ``url`` over gRPC on host:port until stopped."""
    if url.startswith("grpc://"):
        raise SearchError(f"--storage for the proxy must be the database URL (sqlite:///..., postgresql://...), "
                          f"not another proxy ({url})")
    require_grpc()
    check_port(host, port)  # before the store is opened (or created) and the banner printed
    # Heartbeats are recorded by the workers' storage, which here is the gRPC client: none to configure.
    rdb = open_storage(url, heartbeat=False)
    if host in ("0.0.0.0", "::", ""):
        logging.getLogger("search").warning("the storage proxy is bound to all interfaces (%s) without "
                                            "authentication: anyone who can reach this port can change studies",
                                            host)
    echo(f"gRPC storage proxy for {mask(url)} on {host}:{port}; workers use --storage grpc://{host}:{port} "
         f"(Ctrl-C to stop)")
    try:
        # get_storage wraps the RDB store in Optuna's trial cache, as run_grpc_proxy_server's docs ask.
        optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(rdb), host=host, port=port)
    except RuntimeError as err:  # grpc: "Failed to bind to address ..."
        raise SearchError(f"cannot listen on {host}:{port} ({err}); choose another --port") from None
    except KeyboardInterrupt:
        echo("storage proxy stopped")
