"""Names of places: a host:port a server listens on, and a worker's id. (A study store's URL: search/hpo/store.py.)"""
from __future__ import annotations

import errno
import os
import socket

from search.errors import SearchError


def check_port(host: str, port: int) -> None:
    """Refuse in one line a host:port that this machine cannot listen on (taken by another program, or not one of
    its addresses), before a server prints that it listens there."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise SearchError(f"cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}; give --host "
                          f"an address of this machine") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise SearchError(f"port {port} is already in use on {host or 'all interfaces'} (another program "
                                  f"listens there); choose another with --port") from None
            raise SearchError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or "
                              f"--host") from None


def worker_id(pid: int | None = None) -> str:
    """``host:pid``: the `worker` attribute of each trial, and how the supervisor finds its workers' trials."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"
