"""Device discovery and placement (search/devices.py): one `--devices` grammar, and one mapping from a visible GPU
index to the CUDA_VISIBLE_DEVICES a process is given, for every command that places processes on devices.

The mapping is pure given the visible list and the GPU count, so it runs here without a GPU: the count is the one
thing set by hand (as a machine with that many cards visible would report it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search import devices
from search.errors import SearchError
from search.hpo import slots
from search.hpo.studies import load_study
from search.hpo.supervisor import Supervisor, ensure_study
from search.train import parallel
from tests.support.studies import study_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_of_four(monkeypatch):
    """A process that sees 2 cards of the machine's 4: physical GPUs 2 and 3."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)


def gpus(places: list[devices.Placement]) -> list[str]:
    return [p.env["CUDA_VISIBLE_DEVICES"] for p in places]


def test_start_gives_each_worker_the_parents_entry_not_the_bare_index(two_of_four, tmp_path):
    """`search start --workers 3` (and `--devices 1,0`) under CUDA_VISIBLE_DEVICES=2,3: GPUs 2, 3, 2, never 0 or 1."""
    spec = load_study(str(study_file(tmp_path, "dev")))
    url = f"sqlite:///{tmp_path}/s.db"
    ensure_study(spec, url)
    for option, expected in ((None, ["2", "3", "2"]), ("1,0", ["3", "2", "3"]), ("1", ["3", "3", "3"])):
        sup = Supervisor(spec, url, workers=3, trials=1, timeout=None, devices=option, seed_offset=0,
                         echo=lambda _line: None)
        assert gpus([s.place for s in sup.slots]) == expected, option
        assert {s.place.device for s in sup.slots} == {"cuda:0"}  # each sees its one card as cuda:0
        assert sup.slots[0].place.name == f"GPU {expected[0]}"


def test_train_and_export_rerank_pools_give_the_parents_entry(two_of_four):
    """`search train --seeds N --devices LIST` and `search export --rerank K --devices LIST` (the same pool)."""
    assert gpus(parallel.plan("0,1", 4)) == ["2", "3"]  # one process per entry
    assert gpus(parallel.plan("1,cpu,0", 2)) == ["3", ""]  # at most one per run
    assert [p.device for p in parallel.plan("cpu,1", 5)] == ["cpu", "cuda:0"]


def test_a_standalone_worker_takes_its_slots_entry(two_of_four, tmp_path, monkeypatch):
    """`search worker --device cuda` in slot 1 under CUDA_VISIBLE_DEVICES=2,3: GPU 3."""
    monkeypatch.setenv("SEARCH_SLOTS", str(tmp_path / "slots"))
    monkeypatch.setattr(slots, "_mine", None)
    first = slots.claim(tmp_path / "slots")  # another worker of this host holds slot 0
    try:
        line = slots.take("cuda")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and line is not None and "-> GPU 3 of 2" in line
    finally:
        first.release()
        if slots._mine is not None:
            slots._mine.release()


@pytest.mark.parametrize(("index", "parent", "given"), [
    (0, None, "0"), (3, None, "3"), (0, "", "0"),  # nothing set: the index is the card
    (0, "2,3", "2"), (1, "2,3", "3"), (1, " 5 , 7 ", "7"),
    (1, "GPU-aa,GPU-bb", "GPU-bb"), (0, "MIG-1", "MIG-1"),  # UUIDs as they are
])
def test_child_gpu_translates_through_the_parents_list(index, parent, given):
    assert devices.child_gpu(index, parent) == given


def test_placements_split_the_cores_among_the_cpu_processes():
    places = devices.place(["cpu", "0"], 4, "2,3", cores=8)
    assert [(p.device, p.threads) for p in places] == [("cpu", 4), ("cuda:0", 0), ("cpu", 4), ("cuda:0", 0)]
    assert gpus(places) == ["", "2", "", "2"] and places[0].name == "cpu (4 threads)"
    assert devices.place(["cpu"], 3, None, cores=2)[0].threads == 1  # never 0 threads


def test_physical_name_follows_cuda_visible_devices():
    assert devices.physical_name(0, "2") == "GPU 2" and devices.physical_name(1, "3,5") == "GPU 5"
    assert devices.physical_name(0, None) == "GPU 0" and devices.physical_name(1, "") == "GPU 1"
    assert devices.physical_name(0, "GPU-8f1c2a,GPU-77") == "GPU-8f1c2a"


@pytest.mark.parametrize(("text", "count", "entries"), [
    ("0,1", 2, ["0", "1"]), ("cpu", 0, ["cpu"]), ("cpu,cpu", 0, ["cpu", "cpu"]), (" 1 , CPU ", 2, ["1", "cpu"]),
    ("01", 2, ["1"]),
])
def test_one_grammar_takes_what_start_train_and_export_took(text, count, entries):
    assert devices.parse(text, count) == entries


@pytest.mark.parametrize(("text", "count", "words"), [
    ("", 2, "has an empty entry"), ("0,,1", 2, "has an empty entry"),
    ("gpu0", 2, "'gpu0' is neither a GPU index nor cpu"), ("-1", 2, "'-1' is neither"),
    ("cuda:0", 2, "'cuda:0' is neither"),
    ("2", 2, "no GPU 2 (GPU indices 0..1)"), ("0", 0, "no GPU 0 (no GPU is visible here, only cpu)"),
])
def test_bad_devices_are_one_line_naming_the_grammar(text, count, words):
    with pytest.raises(SearchError) as err:
        devices.parse(text, count)
    message = err.value.message
    assert words in message and devices.GRAMMAR in message and "\n" not in message


def test_a_cpu_list_counts_no_gpu_and_loads_no_torch():
    code = ("import sys; from search.devices import placements; "
            "print(len(placements('cpu,cpu', 4, per_entry=True)), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr


def test_gpu_count_asks_nvml_else_a_child_process_never_cuda_here(monkeypatch, tmp_path):
    def cuda_here() -> int:
        raise AssertionError("CUDA started in this process: CUDA_VISIBLE_DEVICES set later would be ignored")

    driver = tmp_path / "nvidiactl"
    driver.write_text("")
    monkeypatch.setattr(devices, "GPU_DRIVER_FILES", (str(driver),))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", cuda_here, raising=False)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 3)
    assert devices.gpu_count() == 3
    children = []

    def child(cmd, **kw):  # type: ignore[no-untyped-def]
        children.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="2\n", stderr="")

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: -1)  # NVML missing or failing
    monkeypatch.setattr(devices.subprocess, "run", child)
    assert devices.gpu_count() == 2 and children[0][0] == sys.executable and "device_count()" in children[0][-1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.gpu_count() == 0  # every card hidden: nothing is asked
    monkeypatch.setattr(devices, "GPU_DRIVER_FILES", (str(tmp_path / "none"),))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.gpu_count() == 0 and len(children) == 1  # no driver: torch is not asked


def test_devices_parsed_once_are_placed_without_parsing_again(two_of_four, monkeypatch):
    """`start` and `export --rerank` parse `--devices` once and hand the entries on (search/devices.py: choose)."""
    chosen = devices.choose("1,0")

    def parse_again(*_args):  # type: ignore[no-untyped-def]
        raise AssertionError("--devices parsed a second time")

    monkeypatch.setattr(devices, "parse", parse_again)
    assert gpus(devices.placements(chosen, 3)) == ["3", "2", "3"]
    assert gpus(parallel.plan(chosen, 4)) == ["3", "2"]


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_one_device_grammar_takes_the_names_it_always_took(name):
    from search.train import config

    assert devices.check_device(name) == name
    assert config.from_dict({"dataset": "digits", "device": name}).device == name


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cudax", "cuda:", "CPU", "mps"])
def test_a_bad_device_is_one_line_wherever_it_is_given(name):
    from search.train import config

    for check in (devices.check_device, devices.resolve_device,
                  lambda n: config.from_dict({"dataset": "digits", "device": n})):
        with pytest.raises(SearchError) as err:
            check(name)
        assert err.value.message == f"device '{name}' is not known; valid: auto, cpu, cuda, cuda:N"


def test_a_device_resolves_and_is_named():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.device_label(torch.device("cpu")) == "cpu"
    assert devices.on_cuda("cuda:1") and not devices.on_cuda("cpu")
    assert devices.on_cuda("auto") == torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(SearchError, match="no CUDA GPU is visible; valid here: auto, cpu"):
            devices.resolve_device("cuda:0")
