"""Per-host worker slots (search/hpo/slots.py): real processes lock them; a slot picks a GPU and a CPU share."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search import devices
from search.errors import SearchError
from search.hpo import slots
from tests.support.cli import cli_env, search_cmd
from tests.support.studies import study_file

ROOT = Path(__file__).resolve().parents[1]

# A worker's claim, alone: print the slot, hold it until stdin closes (or the process is killed).
HOLDER = ("import sys\nfrom pathlib import Path\nfrom search.hpo.slots import claim\n"
          "print(claim(Path(sys.argv[1])).number, flush=True)\nsys.stdin.read()\n")


def hold(folder: Path, n: int) -> list[tuple[int, subprocess.Popen]]:
    """``n`` processes started together, each holding a slot in ``folder``: (slot, process), by slot."""
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return sorted(((int(p.stdout.readline()), p) for p in procs),  # type: ignore[union-attr]
                  key=lambda held: held[0])


def release(held: list[tuple[int, subprocess.Popen]]) -> None:
    for _, p in held:
        if p.poll() is None:
            p.stdin.close()  # type: ignore[union-attr]
        p.wait(timeout=30)
        p.stdout.close()  # type: ignore[union-attr]


@pytest.mark.e2e
def test_processes_claiming_together_get_distinct_slots_and_a_killed_holders_slot_is_free_at_once(tmp_path):
    folder = tmp_path / "slots"  # created by the first claim
    held = hold(folder, 3)
    try:
        assert [n for n, _ in held] == [0, 1, 2]
        assert slots.held(folder) == 3
        killed = held[1][1]
        killed.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel releases the lock
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert slots.held(folder) == 2
        mine = slots.claim(folder)  # the lowest free slot: the dead worker's
        try:
            assert mine.number == 1 and slots.held(folder) == 3
            more = slots.claim(folder)  # all held: the next one
            assert more.number == 3 and slots.held(folder) == 4
            more.release()
        finally:
            mine.release()
        assert slots.held(folder) == 2  # released: free again
    finally:
        release(held)
    assert slots.held(folder) == 0 and sorted(p.name for p in folder.iterdir())[:3] == [
        "slot-0.lock", "slot-1.lock", "slot-2.lock"]


def test_a_folder_where_no_slot_can_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SearchError) as err:
        slots.claim(blocker / "slots")
    assert "$SEARCH_SLOTS" in err.value.message and str(blocker) in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize(("device", "visible", "chooses"), [
    ("cuda", None, True), ("cuda", "0,1", True), ("cuda", "GPU-aa,GPU-bb", True),
    ("cuda", "1", False),  # one GPU named: that one
    ("cuda", "", False),  # none visible: resolve_device says so
    ("cuda:1", None, False), ("cuda:0", "0,1", False),  # an explicit index is kept
    ("cpu", None, False), ("auto", None, False),
])
def test_only_plain_cuda_with_several_gpus_visible_picks_by_slot(device, visible, chooses):
    assert slots.chooses_gpu(device, visible) is chooses


@pytest.fixture
def slot_folder(tmp_path, monkeypatch):
    folder = tmp_path / "slots"
    monkeypatch.setenv("SEARCH_SLOTS", str(folder))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(slots, "_mine", None)
    yield folder
    if slots._mine is not None:
        slots._mine.release()


@pytest.mark.e2e
def test_take_sets_the_slots_gpu_before_cuda_starts_and_keeps_an_explicit_choice(slot_folder, monkeypatch):
    counted = []
    monkeypatch.setattr(devices, "gpu_count", lambda: counted.append(os.environ.get("CUDA_VISIBLE_DEVICES")) or 4)
    held = hold(slot_folder, 2)  # two workers already run on this host: slots 0 and 1
    try:
        line = slots.take("cuda")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2" and counted == [None]
        assert line is not None and line.startswith(f"slot 2 in {slot_folder} -> GPU 2 of 4")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        assert slots.take("cuda") == line and slots.held(slot_folder) == 3  # one slot per process, kept
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
        assert slots.take("cuda") is not None and os.environ["CUDA_VISIBLE_DEVICES"] == "6"
        for device, visible in (("cuda:3", "4,5,6,7"), ("cuda", "5")):
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
            assert slots.take(device) is None and os.environ["CUDA_VISIBLE_DEVICES"] == visible
        monkeypatch.setattr(devices, "gpu_count", lambda: 1)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        assert slots.take("cuda") is None and "CUDA_VISIBLE_DEVICES" not in os.environ  # one GPU: nothing to pick
        assert slots.held(slot_folder) == 3
    finally:
        release(held)


@pytest.mark.e2e  # a fresh interpreter: a process
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU is visible (torch.cuda.is_available() is False)")
def test_after_gpu_count_cuda_visible_devices_still_decides():
    """On a GPU: the count leaves CUDA unstarted, so the GPU a worker then sets is the one CUDA shows it."""
    code = ("import os\nfrom search.devices import gpu_count\nn = gpu_count()\n"
            "os.environ['CUDA_VISIBLE_DEVICES'] = ''\nimport torch\nprint(n, torch._C._cuda_getDeviceCount())\n")
    env = {k: v for k, v in cli_env().items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout.split()
    assert int(out[0]) >= 1 and out[1] == "0"


# --- the CPU threads of `search worker` -----------------------------------------------------------------


@pytest.mark.e2e
def test_threads_default_omp_num_threads_else_the_cores_split_among_the_hosts_workers(slot_folder, monkeypatch):
    monkeypatch.delenv("SEARCH_WORKERS_PER_HOST", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert slots.default_threads(12) is None  # the user's choice: torch follows it
    monkeypatch.setenv("SEARCH_WORKERS_PER_HOST", "4")
    assert slots.default_threads(12) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert slots.default_threads(12) == 3  # told: 12 cores / 4 workers
    assert slots.default_threads(2) == 1  # at least one
    monkeypatch.delenv("SEARCH_WORKERS_PER_HOST")
    assert slots.default_threads(12) == 12  # neither, and no worker holds a slot here
    slots.take("cpu")
    held = hold(slot_folder, 2)
    try:
        assert slots.default_threads(12) == 4  # neither: the slots held, this worker's own included
        assert slots.default_threads(1) == 1
        monkeypatch.setenv("SEARCH_WORKERS_PER_HOST", "2")
        assert slots.default_threads(12) == 6  # the variable wins over the slots
    finally:
        release(held)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_workers_per_host_is_one_line(value, monkeypatch):
    monkeypatch.setenv("SEARCH_WORKERS_PER_HOST", value)
    with pytest.raises(SearchError) as err:
        slots.workers_per_host()
    assert err.value.message == (f"$SEARCH_WORKERS_PER_HOST must be a whole number of workers, at least 1; "
                                 f"got {value!r}")


@pytest.mark.e2e
def test_search_worker_refuses_a_bad_workers_per_host_in_one_line_before_writing_anything(tmp_path):
    spec = study_file(tmp_path, "share", epochs=1, trials=1)
    proc = subprocess.run(search_cmd() + ["worker", "--study", str(spec), "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=cli_env(SEARCH_WORKERS_PER_HOST="0", SEARCH_SLOTS=str(tmp_path / "slots")))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("Error: $SEARCH_WORKERS_PER_HOST must be a whole number of workers, at least 1; "
                           "got '0'\n")
    assert not (tmp_path / "search.db").exists() and not (tmp_path / "slots").exists()  # nothing written
