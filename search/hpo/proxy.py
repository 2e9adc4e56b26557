"""Optuna's gRPC storage proxy: one process in front of the RDB store, for very many workers.

Each worker holding its own database connections (a pool per process, heartbeats, full trial reloads for the
sampler) is what limits an RDB store at a few hundred workers. `search proxy --storage URL` runs
:func:`optuna.storages.run_grpc_proxy_server` over the store: the proxy alone talks to the database, through
Optuna's in-process trial cache, and the workers use ``--storage grpc://HOST:PORT``
(:class:`optuna.storages.GrpcStorageProxy`, which caches finished trials on the client side too).

What the proxy does not carry: heartbeats. GrpcStorageProxy is not a heartbeat storage, so a worker that dies
behind the proxy leaves its trial RUNNING (nothing fails it and queues it again, as happens on a direct RDB URL).
`search start` (the supervisor) still marks a dead worker's trial FAIL itself. The proxy is not authenticated
or encrypted: keep it on 127.0.0.1 or a private network. The workers' side, the client of a grpc:// URL, is here too.
"""
from __future__ import annotations

import logging
from typing import Callable

import optuna

from search import env
from search.errors import SearchError
from search.hpo.store import Store
from search.hpo.urls import check_port

INSTALL_HINT = "pip install 'search[proxy]'"


def require_grpc() -> None:
    try:
        import grpc  # noqa: F401

        # Optuna 5.0's gRPC proxy needs protobuf only when this private module loads; importing it is the one
        # way to find out before a worker or the proxy fails half-way through starting.
        from optuna.storages._grpc.auto_generated import api_pb2_grpc  # noqa: F401
    except ImportError as err:
        raise SearchError(f"the gRPC storage proxy needs grpcio and protobuf ({err.name} is missing): "
                          f"{INSTALL_HINT}") from None


def client(store: Store, cls: type = optuna.storages.GrpcStorageProxy, *,
           ready_timeout: float | None = None) -> optuna.storages.BaseStorage:
    """The storage behind ``grpc://HOST:PORT`` (``store``): a client (``cls``, a GrpcStorageProxy) of a running
    `search proxy`, checked to be answering."""
    assert store.address is not None, store.url
    host, port = store.address
    require_grpc()
    if ready_timeout is None:
        ready_timeout = env.seconds("SEARCH_PROXY_WAIT_S", env.PROXY_WAIT_S)
    storage = cls(host=host, port=port)
    storage.url = store.url  # named in messages, as a database store's URL is
    try:
        storage.wait_server_ready(timeout=ready_timeout)
    except ConnectionError:
        storage.close()
        raise SearchError(f"no storage proxy answers at {host}:{port} (waited {ready_timeout:g} s); "
                          f"start one with: search proxy --storage URL --port {port}") from None
    return storage


def database(store: Store, host: str, port: int) -> Store:
    """The store `search proxy` serves: a database's, never another proxy's; checked, with host:port free, before
    the store is opened."""
    store = store.database("the proxy")
    require_grpc()
    check_port(host, port)  # before the store is opened (or created) and the banner printed
    return store


def serve(rdb: optuna.storages.BaseStorage, store: Store, *, host: str, port: int,
          echo: Callable[[str], None]) -> None:
    """`search proxy`: serve the RDB store ``rdb`` (opened from ``store``, which `database` checked, without
    heartbeats: the workers' storage is the gRPC client) over gRPC on host:port until stopped."""
    if host in ("0.0.0.0", "::", ""):
        logging.getLogger("search").warning("the storage proxy is bound to all interfaces (%s) without "
                                            "authentication: anyone who can reach this port can change studies",
                                            host)
    echo(f"gRPC storage proxy for {store.masked} on {host}:{port}; workers use --storage grpc://{host}:{port} "
         f"(Ctrl-C to stop)")
    try:
        # get_storage wraps the RDB store in Optuna's trial cache, as run_grpc_proxy_server's docs ask.
        optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(rdb), host=host, port=port)
    except RuntimeError as err:  # grpc: "Failed to bind to address ..."
        raise SearchError(f"cannot listen on {host}:{port} ({err}); choose another --port") from None
    except KeyboardInterrupt:
        echo("storage proxy stopped")
