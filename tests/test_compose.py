"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every command a service runs is parsed by the real `search` click commands (unknown options and bad values
raise), the dataset step is run for real, and the files are searched for literal secrets and public ports.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import optuna
import pytest
import tomllib
import yaml
from sqlalchemy.engine import make_url

from search.cli import main
from search.env import VARIABLES
from search.hpo.studies import load_study
from tests.support.cli import cli_env
from tests.support.data import write_medmnist_npz

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
REF = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")  # ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}


def substitute(value: str) -> str:
    """Compose's interpolation, with a dummy for each variable that has no default."""
    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        return arg if op in (":-", "-") else f"dummy-{name.lower()}"
    return REF.sub(one, value)


def as_list(command) -> list[str]:  # type: ignore[no-untyped-def]
    return [substitute(str(a)) for a in (command.split() if isinstance(command, str) else command)]


def check_search_command(args: list[str]) -> click.Command:
    """Parse ``search ARGS`` with the real click commands, without running them; raises click.UsageError."""
    ctx = main.make_context("search", list(args))
    if not args or args[0].startswith("-"):
        raise click.UsageError(f"no subcommand in {args}")
    cmd = main.get_command(ctx, args[0])
    if cmd is None:
        raise click.UsageError(f"no such command: {args[0]}")
    cmd.make_context(args[0], list(args[1:]), parent=ctx)  # unknown options, bad values, missing required
    return cmd


def runs_package(service: dict) -> bool:
    return "build" in service


def package_services() -> dict[str, dict]:
    return {name: s for name, s in SERVICES.items() if runs_package(s)}


def search_services() -> dict[str, list[str]]:
    """Services whose entrypoint is the image's (`search`): name -> the `search` arguments they run."""
    return {name: as_list(s["command"]) for name, s in package_services().items() if "entrypoint" not in s}


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- the checker itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["worker", "--study", "pathmnist", "--bogus"],
    ["dashboard", "--port", "http"],
    ["dashboard", "--port", "70000"],
    ["worker", "--device", "cuda"],  # --study is required
    ["start", "--study", "pathmnist", "--workers", "0"],
    ["wroker", "--study", "pathmnist"],
    [],
])
def test_the_command_checker_rejects_bad_commands(args):
    with pytest.raises(click.UsageError):
        check_search_command(args)


def test_substitution_follows_compose_rules():
    assert substitute("a${X}b") == "adummy-xb"
    assert substitute("${PORT:-8080}") == "8080" and substitute("${PORT-80}") == "80"
    assert substitute("${PW:?set PW in .env (see .env.example)}") == "dummy-pw"


# --- the compose file ------------------------------------------------------------------------------------


def test_every_service_command_is_a_valid_search_command():
    commands = search_services()
    assert {"dashboard", "worker"} <= set(commands)
    for name, args in commands.items():
        cmd = check_search_command(args)
        assert cmd.name == args[0], name
    assert commands["dashboard"][0] == "dashboard" and commands["worker"][0] == "worker"
    assert option(commands["dashboard"], "--host") == "0.0.0.0"  # reachable from the published port
    assert option(commands["worker"], "--device") in ("cuda", "auto")
    for name, args in commands.items():
        if "--study" in args:  # a study shipped with the package, loadable inside the image
            assert load_study(option(args, "--study")).name == option(args, "--study"), name


def test_every_storage_url_is_the_compose_postgres_with_its_credentials():
    pg = SERVICES["postgres"]["environment"]
    urls = {name: option(args, "--storage") for name, args in search_services().items()}
    urls["init"] = as_list(SERVICES["init"]["command"])[1]
    urls["environment"] = substitute(COMPOSE["x-search"]["environment"]["SEARCH_STORAGE"])
    for name, raw in urls.items():
        url = make_url(raw)
        assert url.get_backend_name() == "postgresql", name
        assert url.host == "postgres" and url.port == 5432, name
        assert url.username == pg["POSTGRES_USER"] and url.database == pg["POSTGRES_DB"], name
        assert url.password == "dummy-postgres_password", name  # the variable, substituted
        if name in SERVICES:
            assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name


def password_values(doc) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(where, value) for every password-like value: secret-named settings and the passwords inside URLs."""
    found: list[tuple[str, str]] = []
    secretish = re.compile(r"pass|secret|token|key", re.I)
    in_url = re.compile(r"://[^/:@\s]+:(\$\{[^}]*\}|[^@\s]+)@")

    def walk(node, key: str = "") -> None:  # type: ignore[no-untyped-def]
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, str) and "=" in item and secretish.search(item.split("=", 1)[0]):
                    walk(item.split("=", 1)[1], item.split("=", 1)[0])  # environment: [KEY=VALUE, ...]
                else:
                    walk(item, key)
        elif isinstance(node, str):
            if secretish.search(key):
                found.append((key, node))
            found.extend((f"URL {node}", password) for password in in_url.findall(node))

    walk(doc)
    return found


def secrets_written_in(doc) -> list[str]:  # type: ignore[no-untyped-def]
    """Every password-like value that is a literal, or a reference with a default, instead of ${VAR}."""
    pure_ref = re.compile(r"^\$\{\w+(:\?[^}]*)?\}$")  # ${VAR} or ${VAR:?error}: no default value
    return [f"{where}: {value}" for where, value in password_values(doc) if not pure_ref.match(value)]


def test_no_secret_is_written_in_the_compose_file():
    seen = password_values(COMPOSE)
    assert len(seen) >= 1 + len(search_services())  # postgres' own setting and each service's --storage URL
    assert secrets_written_in(COMPOSE) == []
    assert "change-me" not in (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD=" in (ROOT / ".env.example").read_text()  # where the user sets it


def test_the_secret_check_finds_literals():
    bad = {"services": {
        "db": {"environment": {"POSTGRES_PASSWORD": "hunter2"}},
        "db2": {"environment": ["POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-hunter2}"]},
        "app": {"command": ["dashboard", "--storage", "postgresql://search:hunter2@postgres/search"]},
        "ok": {"command": ["dashboard", "--storage", "postgresql://search:${PW:?set PW in .env}@postgres/s"]},
    }}
    assert len(secrets_written_in(bad)) == 3 and len(password_values(bad)) == 4


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), str(p.get("published"))))
        else:
            parts = substitute(str(p)).split(":")
            out.append((parts[0] if len(parts) == 3 else None, parts[-2] if len(parts) > 1 else parts[0]))
    return out


def test_only_the_dashboard_is_published_and_only_on_localhost():
    ports = {name: published_ports(s) for name, s in SERVICES.items() if s.get("ports")}
    assert set(ports) == {"dashboard"}
    assert ports["dashboard"] == [("127.0.0.1", "8080")]
    assert published_ports({"ports": ["8080:8080"]}) == [(None, "8080")]  # the check sees an open port


def test_every_worker_reserves_a_gpu():
    gpu_commands = {"worker", "start"}
    workers = {name: SERVICES[name] for name, args in search_services().items() if args[0] in gpu_commands}
    assert {"worker", "supervisor"} <= set(workers)
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    # Compose cannot give each replica its own GPU: every worker gets them all and takes one by its slot.
    worker = SERVICES["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    assert int(substitute(str(worker["deploy"]["replicas"]))) >= 1


def test_worker_replicas_share_a_slots_volume_and_know_how_many_they_are():
    worker = SERVICES["worker"]
    env = worker["environment"]
    assert {"SEARCH_SLOTS", "SEARCH_WORKERS_PER_HOST"} <= set(env) <= set(VARIABLES)  # each one the code reads
    # One variable sets both the replicas and what each replica is told; WORKERS=N docker compose up -d.
    assert env["SEARCH_WORKERS_PER_HOST"] == worker["deploy"]["replicas"] == "${WORKERS:-2}"
    assert int(substitute(env["SEARCH_WORKERS_PER_HOST"])) >= 1
    folder = env["SEARCH_SLOTS"]
    mounts = [v.split(":") for v in worker["volumes"]]
    slots = [volume for volume, path, *_ in mounts if path == folder]
    assert slots and slots[0] in COMPOSE["volumes"]  # a named volume, so every replica sees the same lock files
    others = [name for name, s in SERVICES.items() if name != "worker"
              and any(v.split(":")[0] == slots[0] for v in s.get("volumes", []))]
    assert others == []  # the worker replicas' alone: a supervisor's workers take no slots
    # The image's user can create the lock files: a named volume starts with the image's folder's ownership.
    runs = " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(folder)}\b", runs)
    assert re.search(rf"chown search:search [^&]*{re.escape(folder)}\b", runs)
    # What every service reads from the shared environment is still there (merged into the worker's, not replaced).
    shared = COMPOSE["x-search"]["environment"]
    assert {k: v for k, v in env.items() if k in shared} == shared


def test_postgres_has_a_healthcheck_a_named_volume_and_a_required_password():
    pg = SERVICES["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    named = [v.split(":")[0] for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert named and named[0] in COMPOSE["volumes"]
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")  # compose refuses to start


def test_the_data_volume_is_where_search_looks_for_data():
    for name, service in package_services().items():
        data_dir = service["environment"]["SEARCH_DATA_DIR"]
        if name in ("worker", "supervisor", "init"):
            assert any(v.split(":")[0] in COMPOSE["volumes"] and v.split(":")[1] == data_dir
                       for v in service["volumes"]), name


def test_workers_and_the_dashboard_share_the_artifact_volume():
    for name in ("worker", "supervisor", "dashboard"):
        service = SERVICES[name]
        folder = service["environment"]["SEARCH_ARTIFACTS"]
        mounts = [v.split(":") for v in service["volumes"]]
        assert any(volume in COMPOSE["volumes"] and path == folder for volume, path in mounts), name


def _run_init(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    entry = as_list(SERVICES["init"]["entrypoint"])
    assert entry[0] == "python"
    return subprocess.run([sys.executable] + entry[1:] + args, capture_output=True, text=True, timeout=300,
                          env=cli_env(SEARCH_DATA_DIR=str(data_dir)), cwd=data_dir)


@pytest.mark.e2e
def test_init_prepares_the_workers_dataset_and_creates_the_study_before_the_others_start(tmp_path):
    study = load_study(option(search_services()["worker"], "--study"))
    args = as_list(SERVICES["init"]["command"])
    assert args == [study.name, option(search_services()["worker"], "--storage")]
    for name in ("dashboard", "worker"):
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    # The same code, on a SQLite file instead of the compose network's PostgreSQL.
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    write_medmnist_npz(good / f"{study.dataset}.npz", channels=3, classes=9)
    proc = _run_init([study.name, f"sqlite:///{good / 'store.db'}"], good)
    assert proc.returncode == 0, proc.stderr
    created = optuna.load_study(study_name=study.name, storage=f"sqlite:///{good / 'store.db'}")
    assert created.direction.name.lower() == study.direction and created.user_attrs["dataset"] == study.dataset
    (bad / f"{study.dataset}.npz").write_bytes(b"not a zip file")  # present but unreadable: it must say so
    proc = _run_init([study.name, f"sqlite:///{bad / 'store.db'}"], bad)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and study.dataset in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line
    assert "Traceback" not in proc.stderr and not (bad / "store.db").exists()  # nothing created before the data


# --- the Dockerfile --------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_entrypoint_is_search_and_it_installs_the_postgres_extra():
    instructions = dockerfile_instructions()
    entrypoints = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["search"]
    extras = [set(m.split(",")) for op, arg in instructions if op == "RUN"
              for m in re.findall(r"pip install [^&;]*?[\"']?\.\[([\w,-]+)\]", arg)]
    assert extras and "postgres" in extras[-1]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras[-1] <= set(declared)
    assert instructions[0][0] in ("FROM", "ARG")
    assert not [arg for op, arg in instructions if op in ("ENV", "ARG") and re.search(r"pass|secret|token", arg, re.I)]


def test_dockerfile_copies_only_what_exists_and_the_context_leaves_out_local_state():
    for op, arg in dockerfile_instructions():
        if op == "COPY":
            for src in arg.split()[:-1]:
                assert (ROOT / src).exists(), src
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "runs", "*.db", ".git", ".env"} <= ignored
