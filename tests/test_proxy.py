"""`search proxy`: Optuna's gRPC storage proxy over a real SQLite file, with real `search worker` processes."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest
from optuna.trial import TrialState

from search.errors import SearchError
from search.hpo.store import grpc_address
from tests.support.cli import cli_env, run, search_cmd
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file
from tests.support.wait import free_port

try:
    import grpc  # noqa: F401
    from optuna.storages._grpc.auto_generated import api_pb2_grpc  # noqa: F401
    HAVE_GRPC = True
except ImportError:
    HAVE_GRPC = False
needs_grpc = pytest.mark.skipif(not HAVE_GRPC, reason="grpcio/protobuf not installed: pip install 'search[proxy]'")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.e2e
@needs_grpc
def test_two_workers_finish_a_study_through_the_proxy(tmp_path):
    spec = study_file(tmp_path, "proxy", epochs=1, trials=4)
    db = tmp_path / "store.db"
    port = free_port()
    proxy = subprocess.Popen(search_cmd() + ["proxy", "--storage", f"sqlite:///{db}", "--port", str(port)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=cli_env())
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert proxy.poll() is None, proxy.stdout.read()
            assert time.monotonic() < deadline, "the proxy did not listen within 60 s"
            time.sleep(0.2)
        args = ["worker", "--study", str(spec), "--storage", f"grpc://127.0.0.1:{port}", "--device", "cpu"]
        workers = [subprocess.Popen(search_cmd() + args, cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=cli_env()) for _ in range(2)]
        outs = [w.communicate(timeout=600)[0] for w in workers]
        for w, out in zip(workers, outs):
            assert w.returncode == 0, out
            assert "joining study 'proxy'" in out
        assert proxy.poll() is None  # still serving after the workers left
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    # Read the database itself, not through the proxy: the trials really are in the SQLite file.
    trials = trials_of(db, "proxy")
    assert len(by_state(trials, *FINISHED)) >= 4
    assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert not list(tmp_path.glob("search.db*"))  # nothing fell back to the default SQLite store


@pytest.mark.e2e
@needs_grpc
def test_no_proxy_listening_is_one_line_error(tmp_path):
    port = free_port()  # nothing listens there
    proc = subprocess.run(search_cmd() + ["status", "--study", "x", "--storage", f"grpc://127.0.0.1:{port}"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env(SEARCH_PROXY_WAIT_S="1"),
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"Error: no storage proxy answers at 127.0.0.1:{port} (waited 1 s); "
                                   f"start one with: search proxy --storage URL --port {port}")


@pytest.mark.e2e
@needs_grpc
def test_proxy_on_a_port_in_use_is_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(["proxy", "--storage", f"sqlite:///{tmp_path / 'store.db'}", "--port", str(port)], tmp_path,
                   timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""  # no banner
    assert proc.stderr.strip() == (f"Error: port {port} is already in use on 127.0.0.1 (another program listens "
                                   f"there); choose another with --port")
    assert not (tmp_path / "store.db").exists()  # refused before the store was created


@pytest.mark.e2e
def test_proxy_of_a_proxy_is_refused(tmp_path):
    proc = run(["proxy", "--storage", "grpc://127.0.0.1:13000"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "must be the database URL" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_without_grpcio_the_error_names_the_extra(tmp_path):
    # A real interpreter in which `import grpc` fails: a package of that name earlier on the path refuses to load.
    shadow = tmp_path / "shadow" / "grpc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'grpc'\", name='grpc')\n")
    proc = subprocess.run(search_cmd() + ["status", "--study", "x", "--storage", "grpc://127.0.0.1:13000"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=cli_env(PYTHONPATH=str(shadow.parent)))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("Error: the gRPC storage proxy needs grpcio and protobuf (grpc is missing): "
                                   "pip install 'search[proxy]'")


@pytest.mark.parametrize("url, expected", [
    ("grpc://127.0.0.1:13001", ("127.0.0.1", 13001)),
    ("grpc://proxy.internal", ("proxy.internal", 13000)),
    ("grpc://[::1]:9000/", ("::1", 9000)),
])
def test_grpc_urls(url, expected):
    assert grpc_address(url) == expected


@pytest.mark.parametrize("url", ["grpc://", "grpc://127.0.0.1:0", "grpc://host:notaport", "grpc://host:99999", "grpc://host:1/db",
                                 "grpc://user:secret@host:1", "http://host:1"])
def test_bad_grpc_urls_are_refused(url):
    with pytest.raises(SearchError, match="expected grpc://HOST:PORT") as err:
        grpc_address(url)
    assert "secret" not in str(err.value)
