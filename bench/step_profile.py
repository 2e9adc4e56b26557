"""Where a training step's time goes: the engine's step per batch size, and how busy the device is during it.

On a GPU, a small CNN at batch 128 used 0.2% of an H100's matrix rate (bench/gpu_proof.py): this says whether
its step waits on the host (kernel launches, per-step Python) or on the device. For each batch size it times
whole steps (after a warm-up) and then profiles a few: the device's kernel time per step against the step's wall
time (busy share), the number of kernels launched per step, and the host operators that cost most.

    python bench/step_profile.py [--arch simple_cnn_v2] [--batches 128,512] [--steps 50] [--device auto]
    python bench/step_profile.py --device cpu --steps 5 --batches 32     # a quick check on the CPU

PathMNIST-shaped random data (3x28x28, 9 classes; speed does not look at the pixels), flip augmentation, the
engine's own Trainer (search/train/engine.py): the numbers are those of a real trial's steps.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.train.config import TrainConfig  # noqa: E402
from search.train.data import load  # noqa: E402
from search.train.engine import Trainer, resolve_device  # noqa: E402


def write_data(folder: Path, train: int) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", train), ("val", 256), ("test", 256)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, size=(n, 1), dtype=np.uint8)
    np.savez(folder / "pathmnist.npz", **arrays)
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(root: Path, device: torch.device, arch: str, batch: int, steps: int) -> dict[str, float]:
    cfg = TrainConfig(dataset="pathmnist", data_dir=str(root), architecture=arch, augmentation="flip",
                      batch_size=batch, device=str(device), epochs=1)
    trainer = Trainer(cfg, load(cfg.dataset, cfg.data_dir, device), device)
    n = len(trainer.data.train)
    idx = [torch.randint(0, n, (batch,), device=device, generator=trainer.generator) for _ in range(steps)]
    for i in range(min(10, steps)):  # warm-up: cuDNN's algorithm search, the allocator, lazy imports
        trainer.step(idx[i])
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        trainer.step(idx[i])
    sync(device)
    step_s = (time.perf_counter() - t0) / steps

    from torch.profiler import ProfilerActivity, profile

    profiled = min(steps, 20)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with warnings.catch_warnings(), profile(activities=activities) as prof:
        warnings.simplefilter("ignore")  # the profiler's note that it clears its events each cycle
        sync(device)
        t0 = time.perf_counter()
        for i in range(profiled):
            trainer.step(idx[i])
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) is not None
               and str(e.device_type).endswith("CUDA") and e.self_device_time_total > 0]
    device_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in kernels)
    top = sorted((e for e in events if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)[:6]
    return {"batch": batch, "step_ms": step_s * 1e3, "images_per_second": batch / step_s,
            "profiled_step_ms": wall / profiled * 1e3,
            "device_busy": device_us / 1e6 / wall if device.type == "cuda" else float("nan"),
            "kernels_per_step": launches / profiled if device.type == "cuda" else float("nan"),
            "top_host_ops": ", ".join(f"{e.key} {e.self_cpu_time_total / profiled / 1e3:.2f} ms" for e in top)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="simple_cnn_v2")
    ap.add_argument("--batches", default="128,512", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per batch size")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_data(Path(tmp), max(batches) * 4)
        print(f"step profile of {args.arch} on {device} ({torch.__version__})", flush=True)
        for batch in batches:
            r = measure(root, device, args.arch, batch, args.steps)
            print(f"batch {r['batch']:4d}: {r['step_ms']:7.2f} ms/step, {r['images_per_second']:10,.0f} images/s; "
                  f"profiled {r['profiled_step_ms']:.2f} ms/step, device busy {r['device_busy']:.0%}, "
                  f"{r['kernels_per_step']:.0f} kernels/step | host: {r['top_host_ops']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
