"""Names of places: the study store's URL (which store, how to show it without its password, the SQLite or
journal file behind it) and a worker's id. Light to import (SQLAlchemy's URL parser is loaded at the first parse),
so the command line can name the default store in its help without loading a database library."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from search import env
from search.errors import SearchError

DEFAULT_STORAGE = "sqlite:///search.db"
# Optuna's JournalStorage on a file (search/hpo/journal.py). The scheme reads as a file URI does: journal:///abs/x.log
# is an absolute path (what a cluster job needs: its tasks start in other folders), journal:x.log or
# journal:runs/x.log one relative to the working directory. SQLAlchemy has no such dialect, so these URLs never
# reach it.
JOURNAL = "journal:"
JOURNAL_EXAMPLE = "journal:///shared/path/study.log"


def make_url(url: str):  # type: ignore[no-untyped-def]
    """SQLAlchemy's URL of ``url`` (raises for text that is not a URL)."""
    from sqlalchemy.engine import make_url as parse

    return parse(url)


def resolve_url(url: str | None) -> str:
    """--storage, else $SEARCH_STORAGE, else sqlite:///search.db in the working directory."""
    return url or env.text("SEARCH_STORAGE") or DEFAULT_STORAGE


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for every message and log line."""
    if url.startswith(JOURNAL):
        return url  # a file path: nothing secret in it
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only the scheme
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"


def mask_text(text: str, url: str) -> str:
    """Remove the URL's password from any text (driver messages sometimes echo the DSN)."""
    try:
        password = make_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL; None for other stores and for an in-memory SQLite."""
    if url.startswith(JOURNAL):
        return None
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    return Path(u.database) if u.database and u.database != ":memory:" else None


def journal_path(url: str) -> Path | None:
    """The file of a journal: URL (None for other stores): journal:///abs/x.log or journal:relative/x.log."""
    if not url.startswith(JOURNAL):
        return None
    rest = url[len(JOURNAL):]
    if rest.startswith("//"):
        if not rest.startswith("///"):  # journal://host/...: a host has no meaning for a file
            raise SearchError(f"storage URL '{url}' names a host; a journal URL is a path: journal:///abs/path/x.log "
                              f"(absolute) or journal:x.log (relative to the working directory)")
        rest = rest[2:]
    if rest in ("", "/") or rest.endswith("/"):
        raise SearchError(f"storage URL '{url}' names no file; e.g. {JOURNAL_EXAMPLE} or journal:study.log")
    return env.user_path(rest, what=f"storage URL {url}")


def store_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL; None for a database server or a proxy."""
    return journal_path(url) or (sqlite_path(url) if "://" in url and not url.startswith("grpc://") else None)


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
