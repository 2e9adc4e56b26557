"""The study store as one object: its URL parsed once into what it is, checked, and opened.

The command line turns `--storage` into a `Store` once (search/cli.py's storage_option) and every floor below takes
that object. Which kind of store a URL names, the file behind it, how it is shown without its password, and every
line a bad store gets are decided here and nowhere else. `storage.open_storage` opens it: the kind's own module
(RDB stores: search/hpo/storage.py, the journal: journal.py, a proxy: proxy.py), with faults.py's fault handling.

At the bottom of the store's modules (they all use it; it imports none of them), and light to import, so that the
command line can parse `--storage` before it loads a database library: SQLAlchemy's URL parser loads at the first
database URL parsed, Optuna when a store is opened.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from search import env
from search.errors import SearchError

DEFAULT_STORAGE = env.DEFAULT_STORAGE
# Optuna's JournalStorage on a file (search/hpo/journal.py). The scheme reads as a file URI does: journal:///abs/x.log
# is an absolute path (what a cluster job needs: its tasks start in other folders), journal:x.log or
# journal:runs/x.log one relative to the working directory. SQLAlchemy has no such dialect, so these URLs never
# reach it.
JOURNAL = "journal:"
JOURNAL_EXAMPLE = "journal:///shared/path/study.log"
GRPC = "grpc://"  # a `search proxy` in front of the store (search/hpo/proxy.py)
PROXY_PORT = 13000  # a grpc:// URL without a port
EXAMPLES = f"sqlite:///search.db, {JOURNAL_EXAMPLE}, postgresql://user@host:5432/db"

# The kinds: SQLITE, POSTGRESQL, JOURNAL_KIND and GRPC_KIND, or another SQLAlchemy backend's name (mysql, ...).
SQLITE, POSTGRESQL, JOURNAL_KIND, GRPC_KIND = "sqlite", "postgresql", "journal", "grpc"
INVALID = "invalid"


def _sqlalchemy_url(url: str):  # type: ignore[no-untyped-def]
    """SQLAlchemy's URL of ``url`` (raises for text that is not a URL)."""
    from sqlalchemy.engine import make_url

    return make_url(url)


@dataclass(frozen=True)
class Store:
    """A study store URL, parsed: which kind it is and the file behind it. A URL that cannot name a store parses
    too (kind INVALID, ``problem`` its one line), so that the command's other input is checked in its usual order;
    the line is raised where the store is first used."""

    url: str
    kind: str
    file: Path | None = None  # the SQLite file (as the URL has it) or the journal file (absolute); else None
    address: tuple[str, int] | None = None  # a proxy's (host, port)
    problem: str | None = None

    @classmethod
    def parse(cls, url: str) -> Store:
        try:
            if url.startswith(JOURNAL):
                return cls(url, JOURNAL_KIND, file=_journal_file(url))
            if url.startswith(GRPC):
                return cls(url, GRPC_KIND, address=grpc_address(url))
            try:
                parsed = _sqlalchemy_url(url)
                backend = parsed.get_backend_name()
            except Exception:
                raise SearchError(f"storage URL '{mask(url)}' is not valid; examples: {EXAMPLES}") from None
        except SearchError as err:
            return cls(url, INVALID, problem=err.message)
        if backend == SQLITE:
            database = parsed.database
            return cls(url, SQLITE, file=Path(database) if database and database != ":memory:" else None)
        return cls(url, POSTGRESQL if backend.startswith(POSTGRESQL) else backend)

    # -- how it is shown

    @property
    def masked(self) -> str:
        """The URL with any password replaced by ***, for every message and log line."""
        return mask(self.url)

    def mask_text(self, text: str) -> str:
        return mask_text(text, self.url)

    def option(self) -> str:
        """The ``--storage`` a follow-up command needs: none for the store it finds without one."""
        return "" if self.url == locate(None).url else f" --storage {self.masked}"

    # -- checks, each one line

    def check(self) -> None:
        """A URL that names no store: its one line."""
        if self.problem is not None:
            raise SearchError(self.problem)

    def check_file(self, *, must_exist: bool) -> None:
        """The file of a SQLite or journal store: there (``must_exist``: read-only commands never create one), in a
        folder that exists, and SQLite not on a network filesystem."""
        self.check()
        if self.file is None:
            return
        if must_exist and not self.file.exists():
            raise SearchError(f"{self.absent()}; run `search start` first or pass --storage")
        self._check_folder()
        if self.kind == SQLITE:
            _refuse_network_sqlite(self.file)

    def _check_folder(self) -> None:
        if self.file is not None and not self.file.parent.is_dir():
            raise SearchError(f"storage folder {self.file.parent} does not exist")

    def absent(self) -> str | None:
        """For a file store whose file is not made yet, the line that says so; else None."""
        self.check()
        return f"no study store at {self.file}" if self.file is not None and not self.file.exists() else None

    def for_cluster(self) -> Store:
        """The store as tasks on other nodes reach it (`search submit`): a journal's path made absolute (they start
        elsewhere); SQLite refused, as its locking is unsafe across hosts."""
        self.check()
        if self.kind == SQLITE:
            where = f"journal://{(self.file.with_suffix('.log') if self.file else Path('search.log')).absolute()}"
            raise SearchError(f"search submit needs a store that tasks on other nodes can share safely, not SQLite "
                              f"({self.masked}); use --storage {where} on a shared filesystem, or a PostgreSQL URL")
        if self.kind == JOURNAL_KIND:
            self._check_folder()
            return Store.parse(f"journal://{self.file}")
        return self

    def database(self, what: str) -> Store:
        """This store as the database that ``what`` (the proxy) serves: never a proxy itself."""
        self.check()
        if self.kind == GRPC_KIND:
            raise SearchError(f"--storage for {what} must be the database URL (sqlite:///..., postgresql://...), "
                              f"not another proxy ({self.url})")
        return self

    def cannot_open(self, reason: str) -> SearchError:
        """The line of a store that would not open (a server that refused, a driver's error)."""
        return SearchError(f"cannot open storage {self.masked}: {self.mask_text(reason)}")

    def engine_url(self) -> str:
        """The URL SQLAlchemy opens. A plain postgresql:// means psycopg2 to SQLAlchemy 2.0 but psycopg (3) to
        SQLAlchemy 2.1; the `postgres` extra installs psycopg2, so it is named where psycopg is missing (an explicit
        +driver is kept)."""
        import importlib.util

        u = _sqlalchemy_url(self.url)
        if u.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
            if importlib.util.find_spec("psycopg2") is None:
                raise SearchError(f"storage {self.masked} needs a PostgreSQL driver: pip install 'search[postgres]'")
            return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        return self.url


def locate(given: str | Store | None) -> Store:
    """The store a command uses: ``given`` (--storage, parsed or not), else $SEARCH_STORAGE, else sqlite:///search.db
    in the working directory."""
    if isinstance(given, Store):
        return given
    return Store.parse(given or env.text("SEARCH_STORAGE") or DEFAULT_STORAGE)


def store_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL; None for a database server, a proxy or a URL that names no store."""
    return Store.parse(url).file


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for every message and log line."""
    if url.startswith(JOURNAL):
        return url  # a file path: nothing secret in it
    try:
        return _sqlalchemy_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only the scheme
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"


def mask_text(text: str, url: str) -> str:
    """Remove the URL's password from any text (driver messages sometimes echo the DSN)."""
    try:
        password = _sqlalchemy_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def _journal_file(url: str) -> Path:
    """The file of a journal: URL, absolute (the dashboard's server and spawned workers may run in another folder):
    journal:///abs/x.log or journal:relative/x.log."""
    rest = url[len(JOURNAL):]
    if rest.startswith("//"):
        if not rest.startswith("///"):  # journal://host/...: a host has no meaning for a file
            raise SearchError(f"storage URL '{url}' names a host; a journal URL is a path: journal:///abs/path/x.log "
                              f"(absolute) or journal:x.log (relative to the working directory)")
        rest = rest[2:]
    if rest in ("", "/") or rest.endswith("/"):
        raise SearchError(f"storage URL '{url}' names no file; e.g. {JOURNAL_EXAMPLE} or journal:study.log")
    return env.user_path(rest, what=f"storage URL {url}").absolute()


def grpc_address(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` (PORT defaults to 13000) -> (host, port)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != "grpc" or not parts.hostname or port in (-1, 0) or parts.path not in ("", "/")
            or parts.query or parts.username):
        shown = mask(url) if "@" in url else url  # never echo a password, whatever the scheme
        raise SearchError(f"storage URL '{shown}' is not a valid gRPC proxy URL; expected grpc://HOST:PORT, "
                          f"e.g. grpc://127.0.0.1:{PROXY_PORT}")
    return parts.hostname, port or PROXY_PORT


def _refuse_network_sqlite(path: Path) -> None:
    """SQLite on NFS, Lustre, GPFS, ...: refused (search/hpo/netfs.py says why), unless the user allowed it."""
    from search.hpo import netfs

    fs = netfs.network_filesystem(path.parent)
    if fs is None or env.text("SEARCH_ALLOW_NETWORK_SQLITE"):
        return
    raise SearchError(f"{path} is on {fs}, where SQLite's file locking is unsafe and a study can be corrupted "
                      f"silently; use --storage journal://{path.with_suffix('.log').absolute()} (made for shared "
                      f"filesystems) or a PostgreSQL URL, or pass --allow-network-sqlite to use it anyway")
