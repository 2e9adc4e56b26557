"""Property-based tests (Hypothesis): generated study files, TrainConfig files, storage URLs and command lines.

The property is the same everywhere: an input either loads (or runs) or is refused with the project's one-line
user error (SearchError; exit 2 with one line on the command line), never another exception and never a
traceback. A study that loads must also give every trial a valid TrainConfig: its mistakes are found when the file
is read, not in the trials. The example count is capped in tests/conftest.py (the "search" settings profile).
"""
from __future__ import annotations

import socket
import string
from pathlib import Path

import click
import optuna
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st

from search.cli import main
from search.errors import SearchError
from search.hpo import space, studies
from search.hpo.storage import open_storage
from search.train import config
from tests.support.studies import write_study

# --- values -------------------------------------------------------------------------------------------------

WORDS = ["digits", "mnist", "pathmnist", "chestmnist", "simple_cnn_v1", "resnet18", "adam", "sgd", "val_acc",
         "val_auc", "params", "maximize", "minimize", "tpe", "random", "cmaes", "qmc", "gp", "nsgaii", "median",
         "hyperband", "percentile", "none", "flip", "dihedral+color", "none+flip", "cpu", "cuda", "cuda:1", "auto",
         "1e-3", "1e400", "-0", "nan", ".inf", "0x10", "1_000", "~", "", " ", "yes", "on", "2020-01-01", "28",
         "fp16", "cosine", "onecycle", "float", "int", "categorical", "\t", "é", "a\nb"]
NUMBERS = st.one_of(st.sampled_from([0, 1, 2, 28, 64, 224, 0.5, 1e-4, 0.999, 1.0, -1, 2**32, 2**63, -1e-300, 10**400,
                                     float("nan"), float("inf")]),
                    st.integers(-10, 300), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(WORDS), st.text(max_size=6))
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.one_of(st.sampled_from(WORDS),
                                                                                st.integers(-2, 2)),
                                                                      inner, max_size=3)),
                    max_leaves=6)


def sometimes(plausible: st.SearchStrategy, junk: st.SearchStrategy = JUNK) -> st.SearchStrategy:
    """Mostly a plausible value (so the deeper checks are reached), else anything: weighted by a drawn number, as
    one_of's own choice of a branch is not an even one."""
    return st.integers(0, 9).flatmap(lambda i: junk if i == 0 else plausible)


def either(usual: st.SearchStrategy, edges: list) -> st.SearchStrategy:
    """``usual``, or one of ``edges`` three times in ten."""
    return st.integers(0, 9).flatmap(lambda i: st.sampled_from(edges) if i < 3 else usual)


# The values where number handling breaks: a bool (an int in Python), an integer beyond float's range, a float that
# is an integer, strings that are numbers, NaN and infinities.
INT_EDGES = [0, 1, -1, 2, 28, 64, 224, True, 2.0, 2**31, 2**63, 10**400, "3", "1e400"]
FLOAT_EDGES = [0, 0.0, -0.0, 1, 1e-300, 1e308, True, 10**400, "1e-3", "1e400", "nan", "-inf", float("nan"),
               float("inf")]


def integers(low: int, high: int) -> st.SearchStrategy:
    return either(st.integers(low, high), INT_EDGES)


def floats(low: float, high: float) -> st.SearchStrategy:
    return either(st.floats(low, high), FLOAT_EDGES)


# --- TrainConfig values, key by key -------------------------------------------------------------------------

CONFIG_VALUES: dict[str, st.SearchStrategy] = {
    "dataset": st.sampled_from(["digits", "mnist", "pathmnist", "chestmnist", "octmnist", "nope"]),
    "data_dir": st.sampled_from([None, "data", "", "/nonexistent"]),
    "architecture": st.sampled_from(["simple_cnn_v1", "simple_cnn_v2", "resnet18", "alexnet", "xception", "x"]),
    "epochs": integers(-1, 12),
    "batch_size": integers(-1, 512),
    "lr": floats(-1, 1),
    "optimizer": st.sampled_from(["adam", "adamw", "sgd", "rmsprop"]),
    "momentum": floats(-0.5, 1.5),
    "nesterov": st.booleans(),
    "weight_decay": floats(-1e-3, 1e-2),
    "dropout": floats(-0.5, 1.5),
    "augmentation": st.sampled_from(["none", "flip", "crop+color", "dihedral+dihedral", "none+flip", "FLIP", "x",
                                     "affine@0.3", "trivial@2", "flip@0.5", "erase@x", "color@0.4+blur"]),
    "label_smoothing": floats(-0.5, 1.5),
    "schedule": st.sampled_from(["constant", "cosine", "onecycle", "step"]),
    "warmup_epochs": floats(-1, 15),
    "metric": st.sampled_from(["val_acc", "val_auc", "params"]),
    "keep_epoch_by": st.sampled_from([None, "val_acc", "val_auc", "val_loss", "train_loss"]),
    "tta": st.sampled_from(["none", "flip", "dihedral", "rotate", "FLIP"]),
    "seed": integers(-2**70, 2**70),
    "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cudax", "mps"]),
    "pretrained": st.booleans(),
    "precision": st.sampled_from(["auto", "bf16", "fp16", "fp32", "fp8"]),
    "compile": st.booleans(),
    "graphs": st.sampled_from(["auto", "on", "off", True, False, "always"]),
    "size": st.sampled_from([28, 64, 128, 224, 32, 0, True, 28.0, "28"]),
    "val_fraction": floats(-0.5, 1.0),
    "test_fraction": floats(-0.5, 1.0),
    "split_seed": integers(-1, 2**40),
    "skip_bad_images": st.booleans(),
    "aug_strength": st.one_of(st.none(), floats(-0.5, 1.5)),
    "mix": st.sampled_from(["none", "mixup", "cutmix", "blend"]),
    "mix_alpha": floats(-1, 4),
    "mix_prob": floats(-0.5, 1.5),
    "symmetry": st.sampled_from([None, "none", "flip", "dihedral", "rot"]),
}


@st.composite
def config_mappings(draw: st.DrawFn) -> dict:
    keys = draw(st.lists(st.sampled_from(config.KEYS), unique=True, max_size=len(config.KEYS)))
    values = {key: draw(sometimes(CONFIG_VALUES[key])) for key in keys}
    if draw(st.integers(0, 9)) == 0:
        values[draw(st.sampled_from(["search", "lr_", "Dataset", "space"]))] = draw(JUNK)
    return values


# --- study files ----------------------------------------------------------------------------------------------

SEARCHABLE = [k for k in config.KEYS if k not in space.STUDY_KEYS]


@st.composite
def space_entries(draw: st.DrawFn, name: str, earlier: dict[str, dict]) -> dict:
    """A space entry for ``name``: its bounds and choices drawn mostly from the values of that key."""
    own = CONFIG_VALUES.get(name, SCALARS)
    kind = draw(sometimes(st.sampled_from(space.TYPES), SCALARS))
    entry: dict = {"type": kind}
    if kind == "categorical" or draw(st.integers(0, 5)) == 0:
        entry["choices"] = draw(sometimes(st.lists(sometimes(own, SCALARS), max_size=4)))
    if kind != "categorical" or draw(st.integers(0, 5)) == 0:
        whole = kind == "int"
        bound = st.one_of(own, integers(-4, 300) if whole else floats(-1, 2))
        for key in ("low", "high"):
            if draw(st.integers(0, 9)):
                entry[key] = draw(sometimes(bound))
        if draw(st.booleans()):
            entry["step"] = draw(sometimes(integers(1, 40) if whole else floats(1e-3, 0.5)))
        if draw(st.booleans()):
            entry["log"] = draw(sometimes(st.booleans()))
    if earlier and draw(st.integers(0, 2)) == 0:
        other = draw(st.sampled_from(sorted(earlier)))
        values = earlier[other].get("choices") if isinstance(earlier[other], dict) else None
        value = st.sampled_from(values) if isinstance(values, list) and values else SCALARS
        entry["when"] = draw(sometimes(st.fixed_dictionaries({other: st.one_of(value, st.lists(value, max_size=3))})))
    if draw(st.integers(0, 19)) == 0:
        entry[draw(st.sampled_from(["choice", "min", "lower"]))] = draw(SCALARS)
    return entry


@st.composite
def spaces(draw: st.DrawFn) -> dict:
    names = draw(st.lists(sometimes(st.sampled_from(SEARCHABLE), st.sampled_from(["dataset", "epochs", "x", "1"])),
                          unique=True, max_size=4))
    out: dict = {}
    for name in names:
        out[name] = draw(sometimes(space_entries(name, dict(out))))
    return out


OBJECTIVES = st.lists(st.fixed_dictionaries({"metric": st.sampled_from(["val_acc", "val_auc", "params",
                                                                         "latency_ms", "loss"]),
                                              "direction": st.sampled_from(["maximize", "minimize", "up"])}),
                      max_size=3)
SAMPLER = st.one_of(st.sampled_from(list(studies.SAMPLERS) + ["grid"]),
                    st.fixed_dictionaries({"name": st.sampled_from(list(studies.SAMPLERS))},
                                          optional={"seed": sometimes(integers(-1, 2**40)),
                                                    "n_startup_trials": sometimes(st.integers(-1, 5)),
                                                    "multivariate": JUNK, "scramble": JUNK, "qmc_type": JUNK,
                                                    "population_size": JUNK, "sigma0": JUNK}))
PRUNER = st.one_of(st.sampled_from(list(studies.PRUNERS) + ["asha"]),
                   st.fixed_dictionaries({"name": st.sampled_from(list(studies.PRUNERS))},
                                         optional={"n_startup_trials": sometimes(st.integers(-1, 5)),
                                                   "n_warmup_steps": JUNK, "percentile": sometimes(NUMBERS),
                                                   "min_resource": sometimes(st.integers(-1, 20)),
                                                   "max_resource": JUNK, "reduction_factor": sometimes(NUMBERS),
                                                   "interval_steps": JUNK}))


@st.composite
def study_mappings(draw: st.DrawFn) -> dict:
    plausible = {
        "name": sometimes(st.text(string.ascii_letters + "._-", min_size=1, max_size=8)),
        "dataset": sometimes(CONFIG_VALUES["dataset"]),
        "data_dir": sometimes(CONFIG_VALUES["data_dir"]),
        "metric": sometimes(CONFIG_VALUES["metric"]),
        "direction": sometimes(st.sampled_from(["maximize", "minimize"])),
        "objectives": sometimes(OBJECTIVES),
        "epochs": sometimes(integers(0, 12)),
        "trials": sometimes(integers(0, 30)),
        "timeout": sometimes(NUMBERS),
        "sampler": sometimes(SAMPLER),
        "pruner": sometimes(PRUNER),
        "space": sometimes(spaces()),
        "fixed": sometimes(config_mappings()),
        "enqueue": sometimes(st.lists(st.dictionaries(st.sampled_from(SEARCHABLE), SCALARS, max_size=3),
                                      max_size=2)),
        "keep_best_weights": sometimes(st.booleans()),
        "keep_epoch_by": sometimes(CONFIG_VALUES["keep_epoch_by"]),
        "pack": sometimes(integers(0, 40)),
        "cv_folds": sometimes(integers(0, 12)),
    }
    keys = draw(st.lists(st.sampled_from(list(plausible)), unique=True, max_size=len(plausible)))
    # the required keys are there most of the time, so the checks behind them are reached
    keys = [k for k in ("name", "dataset") if draw(st.integers(0, 9))] + [k for k in keys if k not in
                                                                          ("name", "dataset")]
    values = {key: draw(plausible[key]) for key in keys}
    if draw(st.integers(0, 9)) == 0:
        values[draw(st.sampled_from(["Name", "spaces", "budget", "1"]))] = draw(JUNK)
    return values


# YAML the dumper never writes: tags, anchors (a recursive one too), merges, odd scalars, bad syntax.
YAML_EDGES = [
    "space: &a {lr: *a}\n", "fixed: &a [*a]\n", "fixed: {<<: {lr: 0.1}}\n", "epochs: !!float 3\n",
    "data_dir: !!binary aGk=\n", "fixed: !!set {lr}\n", "name: !!python/object:os.system x\n", "epochs: 0x10\n",
    "epochs: 1_0\n", "timeout: .nan\n", "timeout: 2020-01-01\n", "timeout: 1e400\n", "? [a, b]\n: 1\n",
    "name: [unclosed\n", "\tname: x\n", "name: x\nname: y\n", "epochs: 3\n---\nepochs: 4\n", "%YAML 9.9\n---\n",
    "space: {lr: {type: float, low: 1e-4, high: 1e-2, log: yes}}\n", "fixed: {seed: 99999999999999999999999}\n",
    "space: {size: {type: int, low: 28, high: 224}}\n", "fixed: {lr: 1e-3}\n", "\ufeffepochs: 2\n", "\x00",
    "space: {dropout: {type: float, low: .nan, high: 0.5}}\n", "trials: -.inf\n", "name: &n x\nfixed: *n\n",
]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def dumped(values: object) -> str:
    return yaml.safe_dump(values, allow_unicode=True, sort_keys=False)


def loads_or_refuses(load, *args, **kwargs):  # type: ignore[no-untyped-def]
    """``load(...)``'s result, or None when it refused with one line; anything else fails the test."""
    try:
        return load(*args, **kwargs)
    except SearchError as err:
        assert err.message and "\n" not in err.message
        return None


def every_trial_is_valid(spec: studies.StudySpec, n: int = 6) -> None:
    """A study that loaded: trials drawn from its space (random and queued) all make valid TrainConfigs."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                directions=spec.directions)
    for entry in spec.enqueue:
        study.enqueue_trial(entry)
    for _ in range(n + len(spec.enqueue)):
        trial = study.ask()
        studies.suggest_config(spec, trial)  # a SearchError here is a study that loaded but cannot run
        study.tell(trial, [0.5] * len(spec.directions))


@given(values=study_mappings(), edge=st.one_of(st.none(), st.sampled_from(YAML_EDGES)))
def test_study_files_load_or_refuse_in_one_line(tmp_path_factory, values, edge):
    folder = tmp_path_factory.mktemp("study")
    text = dumped(values) + (edge or "") if not (edge and edge.startswith(("%", "\x00"))) else edge + dumped(values)
    spec = loads_or_refuses(studies.load_study, str(write(folder, "s.yaml", text)))
    if spec is not None:
        every_trial_is_valid(spec)


@given(values=config_mappings(), edge=st.one_of(st.none(), st.sampled_from(YAML_EDGES)),
       epochs=st.one_of(st.none(), st.integers(-1, 3)), device=st.one_of(st.none(), st.sampled_from(["cpu", "gpu"])))
def test_train_config_files_load_or_refuse_in_one_line(tmp_path_factory, values, edge, epochs, device):
    folder = tmp_path_factory.mktemp("config")
    path = write(folder, "c.yaml", dumped(values) + (edge or ""))
    cfg = loads_or_refuses(config.load, path, epochs=epochs, device=device)
    if cfg is not None:  # what loads is written back and read again unchanged (search export -> search train)
        config.dump(cfg, folder / "again.yaml")
        assert config.load(folder / "again.yaml") == cfg


@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64)))
def test_any_bytes_as_a_study_or_config_file(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("raw")
    path = write(folder, "r.yaml", raw)
    spec = loads_or_refuses(studies.load_study, str(path))
    if spec is not None:
        every_trial_is_valid(spec)
    loads_or_refuses(config.load, path)


# --- storage URLs -------------------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@st.composite
def storage_urls(draw: st.DrawFn, folder: Path) -> str:
    """URLs that never leave this machine: SQLite files (missing, in missing folders, not a database), the local
    PostgreSQL with made-up databases and users, closed ports, gRPC to nothing, unknown schemes, and junk."""
    word = st.text(string.ascii_letters + string.digits + "_-.%@:/?=&#~ ", max_size=10)
    host = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "127.0.0.1:1", "127.0.0.1:99999", "127.0.0.1:x"])
    return draw(st.one_of(
        st.builds(lambda w: f"sqlite:///{folder}/{w}", word),
        st.builds(lambda w: f"sqlite:///{folder}/missing/{w}.db", word),
        st.sampled_from([f"sqlite:///{folder}/not-a-db.db", f"sqlite:///{folder}", "sqlite://", "sqlite:///:memory:",
                         "sqlite:////", "sqlite:", "grpc://", "grpc://:13000", "grpc://127.0.0.1:0",
                         "grpc://127.0.0.1:x", "grpc://h/p", "postgresql://", "mysql://u@127.0.0.1:1/db",
                         "oracle://x", "file:///tmp/x", "://", "search.db", "~", " "]),
        st.builds(lambda h, u, d: f"postgresql://{u}@{h}/{d}", host, word, word),
        st.builds(lambda w: f"postgresql://127.0.0.1:{_closed_port()}/{w}", word),
        # a made-up host name would wait on the DNS: the schemes that reach a server get the hosts above only
        st.builds(lambda s, w: f"{s}{w}", st.sampled_from(["sqlite://", "SQLITE://", "http://", "x://", "journal:",
                                                           "journal://", f"journal:{folder}/", "grpc://127.0.0.1:",
                                                           "postgresql+psycopg2://127.0.0.1:1/"]), word),
        word,
    ))


@pytest.fixture
def store_folder(tmp_path, monkeypatch) -> Path:
    """The working folder of the storage and command-line tests (whatever a command writes stays in it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-db.db").write_bytes(b"this is not a database file" * 100)
    # a store or proxy that never comes is refused within a second, not waited for
    monkeypatch.setenv("SEARCH_STORE_WAIT_S", "1")
    monkeypatch.setenv("SEARCH_PROXY_WAIT_S", "1")
    # For `start`'s stopper: a valid study whose data file is damaged, so that the command gets past the study,
    # --devices and --storage checks and stops at the data check, before it writes or trains anything.
    (tmp_path / "damaged-data").mkdir()
    (tmp_path / "damaged-data" / "organamnist.npz").write_bytes(b"not an npz file")
    write_study(tmp_path, "fuzz", dataset="organamnist")
    return tmp_path


@given(data=st.data())
def test_storage_urls_open_or_refuse_in_one_line(store_folder, data):
    url = data.draw(storage_urls(store_folder))
    loads_or_refuses(open_storage, url, must_exist=True, heartbeat=False)


# --- every option of every command --------------------------------------------------------------------------

OPTION_VALUES = st.one_of(st.sampled_from(["0", "1", "-1", "2", "0.5", "nan", "inf", "1e9", "99999999999999999999",
                                           "cpu", "cpu,cpu", "0,1", "cuda", ",", "", " ", "x", "--", "-", "--study",
                                           "-h", "none", "best.yaml", "a/b/c", "/", ".", "0.0.0.0", "::", "65536",
                                           "sqlite://", "grpc://127.0.0.1:1", "x=", "=y", "L=dir", "digits"]),
                          st.text(max_size=8).filter(lambda s: "\x00" not in s))


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(sorted(main.commands)))
    command = main.commands[name]
    names = [opt for p in command.params if isinstance(p, click.Option) for opt in p.opts]
    args = [name]
    for _ in range(draw(st.integers(0, 6))):
        token = draw(sometimes(st.sampled_from(names), st.sampled_from(["--nope", "-x", "--", "arg", "-h"])))
        args.append(token)
        if draw(st.integers(0, 4)):
            args.append(draw(OPTION_VALUES))
    return args


@pytest.fixture
def held_port():
    """A port this test holds open on every interface, so that no fuzzed dashboard or proxy ever serves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def _stoppers(name: str, folder: Path, port: int) -> tuple[list[str], list[str]]:
    """Options put before and after the generated ones (the last of a repeated option wins): each command ends at
    its first check of a study, a file or a store that is not there, or of a port that is taken, so no generated
    line ever trains or serves. `start` gets a valid study with a damaged data file instead, which it checks after
    the generated --devices and --storage (the missing store goes first, for a line that names none)."""
    command = main.commands[name]
    params = {p.name for p in command.params}
    before, after = [], []
    if name == "start":
        before += ["--storage", f"sqlite:///{folder}/missing/search.db"]
        after += ["--study", str(folder / "fuzz.yaml"), "--data-dir", str(folder / "damaged-data")]
    elif "study" in params:
        after += ["--study", "no-such-study"]
    if "storage" in params and name != "start":
        after += ["--storage", f"sqlite:///{folder}/missing/search.db"]
    if "port" in params:
        after += ["--port", str(port)]
    if name in ("train", "enqueue"):
        after += [str(folder / "missing.yaml")]
    return before, after


@given(data=st.data())
def test_every_option_of_every_command_runs_or_refuses_in_one_line(store_folder, held_port, data):
    args = data.draw(command_lines())
    assume("-h" not in args and "--help" not in args)  # help is a page, not an error
    # A --workers beyond any machine (e.g. 10**20) makes `start` lay out one placement per worker before its data
    # check: memory, not a one-line error (an upper bound for the option would make it one); not drawn here.
    assume(args[0] != "start" or not any(a == "--workers" and b.isdigit() and int(b) > 4096
                                         for a, b in zip(args, args[1:])))
    before, after = _stoppers(args[0], store_folder, held_port)
    full = args[:1] + before + args[1:] + after
    result = CliRunner().invoke(main, full, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"search {' '.join(full)!r}: {result.exception!r}") from result.exception
    assert "Traceback" not in result.output, full
    assert result.exit_code in (0, 2), (full, result.exit_code, result.output)
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (full, result.output)
