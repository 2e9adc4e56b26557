"""Names of places: the study store's URL (which store, how to show it without its password, the SQLite file
behind it) and a worker's id. Light to import (SQLAlchemy's URL parser is loaded at the first parse), so the
command line can name the default store in its help without loading a database library."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from search import env

DEFAULT_STORAGE = "sqlite:///search.db"


def make_url(url: str):  # type: ignore[no-untyped-def]
    """SQLAlchemy's URL of ``url`` (raises for text that is not a URL)."""
    from sqlalchemy.engine import make_url as parse

    return parse(url)


def resolve_url(url: str | None) -> str:
    """--storage, else $SEARCH_STORAGE, else sqlite:///search.db in the working directory."""
    return url or env.text("SEARCH_STORAGE") or DEFAULT_STORAGE


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for every message and log line."""
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
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    return Path(u.database) if u.database and u.database != ":memory:" else None


def worker_id(pid: int | None = None) -> str:
    """``host:pid``: the `worker` attribute of each trial, and how the supervisor finds its workers' trials."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"
