"""Which devices a `search` process may use, and what each process it starts is given: the one owner of GPU
counting, of CUDA_VISIBLE_DEVICES, of the `--devices` grammar of `start`, `train` and `export --rerank`, and of the
single `--device` grammar (a config's `device`, `search worker --device`): which torch device a name means, and
how a worker's card is named.

The one thing to know: a GPU index a user writes counts among the cards *this* process sees, as torch's cuda:N do.
Under CUDA_VISIBLE_DEVICES=2,3, index 0 is GPU 2, and the child that trains on it is given CUDA_VISIBLE_DEVICES=2
(the parent's entry, never the bare index) and knows its card as cuda:0. GPUs are counted without starting CUDA
in this process, so that a CUDA_VISIBLE_DEVICES set afterwards (a worker's slot) still decides.

Imports nothing of the floors: train and hpo both use it; torch is imported only where a GPU driver is installed,
or by the calls that resolve a device (whose callers train, and have torch loaded already).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search import env
from search.errors import SearchError

if TYPE_CHECKING:
    import torch

CPU = "cpu"
DEVICE_GRAMMAR = "auto, cpu, cuda, cuda:N"
_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")
GRAMMAR = "comma-separated GPU indices (among the visible GPUs) and cpu, e.g. 0,1 or cpu or cpu,cpu"
# Where a GPU driver shows itself (NVIDIA's, WSL's GPU bridge, ROCm's): only there can torch see a GPU, and only
# there is torch imported to count them (a CPU machine's supervisor would otherwise load it for nothing).
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def visible() -> str | None:
    """CUDA_VISIBLE_DEVICES as this process has it (None: unset, every card in CUDA's order)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def entries(value: str | None) -> list[str]:
    """The entries of a CUDA_VISIBLE_DEVICES value: indices or UUIDs (GPU-..., MIG-...); [] for None or ""."""
    return [e.strip() for e in (value or "").split(",") if e.strip()]


def gpu_count() -> int:
    """The GPUs CUDA would show this process (CUDA_VISIBLE_DEVICES applied), counted without starting CUDA here."""
    if visible() is not None and not entries(visible()):
        return 0  # CUDA_VISIBLE_DEVICES="" hides every card
    if not any(map(os.path.exists, GPU_DRIVER_FILES)):
        return 0
    import torch

    if not torch.backends.cuda.is_built():
        return 0
    nvml = getattr(torch.cuda, "_device_count_nvml", None)  # what torch.cuda.device_count() asks before CUDA runs
    if nvml is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Can't initialize NVML": answered below
            count = nvml()
        if count >= 0:
            return count
    # No NVML here: count in a child process, so that CUDA starts there and not in this one.
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=120, start_new_session=True)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def child_gpu(index: int, parent: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES that shows a child process this process's visible GPU ``index`` (as its cuda:0):
    the index's entry in the parent's CUDA_VISIBLE_DEVICES (``parent``), or the index itself when that is unset."""
    listed = entries(parent)
    if not listed:
        return str(index)
    if index >= len(listed):
        raise ValueError(f"GPU {index} is not among CUDA_VISIBLE_DEVICES={parent}")
    return listed[index]


def physical_name(index: int, value: str | None) -> str:
    """The card that CUDA's device ``index`` is, as the machine names it: "GPU 2" under CUDA_VISIBLE_DEVICES=2
    (``value``); a UUID entry (GPU-..., MIG-...) as it is."""
    listed = entries(value)
    if index < len(listed):
        entry = listed[index]
        return f"GPU {entry}" if entry.isdigit() else entry
    return f"GPU {index}"


def parse(text: str, count: int | None = None) -> list[str]:
    """The entries of a `--devices` list, each "cpu" or a GPU index; anything else is one line. ``count``: the GPUs
    visible, to check the indices against (None: counted here, when the list names a GPU)."""
    chosen = [d.strip().lower() for d in text.split(",")]
    if not all(chosen):
        raise SearchError(f"--devices {text!r} has an empty entry; valid: {GRAMMAR}")
    bad = [d for d in chosen if d != CPU and not d.isdigit()]
    if bad:
        raise SearchError(f"--devices {text}: {bad[0]!r} is neither a GPU index nor cpu; valid: {GRAMMAR}")
    gpus = [int(d) for d in chosen if d != CPU]
    if gpus:
        count = gpu_count() if count is None else count
        missing = [g for g in gpus if g >= count]
        if missing:
            seen = f"GPU indices 0..{count - 1}" if count else "no GPU is visible here, only cpu"
            raise SearchError(f"--devices {text}: no GPU {missing[0]} ({seen}); valid: {GRAMMAR}")
    return [d if d == CPU else str(int(d)) for d in chosen]


@dataclass(frozen=True)
class Placement:
    """What one child process is given: the device it trains on, its environment, its CPU threads."""

    device: str  # "cuda:0" (its one card) or "cpu"
    env: dict[str, str] = field(hash=False)  # added to its environment: CUDA_VISIBLE_DEVICES
    threads: int  # torch's CPU threads (0 on a GPU: torch's default)

    @property
    def name(self) -> str:
        """As the terminal names it: "GPU 2", a UUID, or "cpu (4 threads)"."""
        if self.device == CPU:
            return f"cpu ({self.threads} threads)"
        return physical_name(0, self.env["CUDA_VISIBLE_DEVICES"])


def place(chosen: list[str], processes: int, parent: str | None, cores: int) -> list[Placement]:
    """Process i of ``processes`` on ``chosen[i % len(chosen)]`` (entries of `parse`): a GPU is translated through
    the parent's CUDA_VISIBLE_DEVICES (``parent``); the CPU processes split the ``cores`` evenly."""
    on = [chosen[i % len(chosen)] for i in range(processes)]
    threads = max(1, cores // max(1, on.count(CPU)))
    return [Placement(CPU, {"CUDA_VISIBLE_DEVICES": ""}, threads) if d == CPU
            else Placement("cuda:0", {"CUDA_VISIBLE_DEVICES": child_gpu(int(d), parent)}, 0) for d in on]


def choose(text: str | None) -> list[str]:
    """The devices of `--devices` ``text`` (`parse`); no list: every visible GPU, else the CPU. A command parses its
    option once, through this, and hands the entries on."""
    if text is None:
        return [str(i) for i in range(gpu_count())] or [CPU]
    return parse(text)


def placements(devices: str | list[str] | None, processes: int, *, per_entry: bool = False) -> list[Placement]:
    """Where ``processes`` child processes run for `--devices` ``devices`` (its text, or its entries as `choose`
    gave them): round-robin over its entries (`search start`'s workers), or with ``per_entry`` one process per
    entry, at most ``processes`` (`search train --seeds`, `export --rerank`)."""
    picked = devices if isinstance(devices, list) else choose(devices)
    if per_entry:
        picked = picked[:processes]
        processes = len(picked)
    return place(picked, processes, visible(), env.cores())


# --- one device: `--device`, a config's `device` ---------------------------------------------------------------


def check_device(name: str) -> str:
    """``name`` if it is one device in the `--device` grammar (auto, cpu, cuda or cuda:N); else one line."""
    if not _DEVICE.fullmatch(name):
        raise SearchError(f"device '{name}' is not known; valid: {DEVICE_GRAMMAR}")
    return name


def on_cuda(name: str) -> bool:
    """Whether device ``name`` trains on a GPU here: cuda or cuda:N, or auto where torch sees one."""
    if name == "auto":
        import torch

        return torch.cuda.is_available()
    return name.startswith("cuda")


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first GPU if there is one, else the CPU. Asking for CUDA without a GPU is a user error."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SearchError(f"device '{name}' was asked for but no CUDA GPU is visible; valid here: auto, cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SearchError(f"device '{name}' does not exist; valid: cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return dev
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """Which card a worker trains on: "cuda:0 = GPU 2 (NVIDIA H100 80GB HBM3, PCI 0000:1b:00.0)"; "cpu" else.

    Every supervised worker sees its card as cuda:0 through CUDA_VISIBLE_DEVICES; this names the physical one.
    """
    if device.type != "cuda":
        return str(device)
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    details = [props.name]
    if all(hasattr(props, k) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        details.append(f"PCI {props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0")
    return f"cuda:{index} = {physical_name(index, visible())} ({', '.join(details)})"
