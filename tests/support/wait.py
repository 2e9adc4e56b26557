"""Waiting for something to happen, and what the tests of servers (dashboard, proxy) wait on."""
from __future__ import annotations

import socket
import time
import urllib.request


def wait_for(predicate, timeout: float, what: str, *, every: float = 0.2):
    """The predicate's first true value, polled every `every` seconds; fails naming `what` after `timeout`.

    Poll often (`every=0.05`) where the moment is short, as between two trials for a Ctrl-C."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str):
    """The body of a 200 answer, else None (not answering yet, or an error)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None
