"""Trial packs' training speed: K runs trained as one fused model (search/train/pack.py) against the same K runs
trained one after another, each by its own engine Trainer, measured in one run on one device.

A pack runs fused layers (search/train/fuse.py: the default on CUDA) or its members' own models side by side (the
default on the CPU); both are measured. All sides train the same K configurations (same architecture and batch
size, different learning rates, dropout and seeds) on the same generated PathMNIST-layout file; each timed step is
a full training step (inputs, augmentation, forward, loss, backward, optimizer, schedule) of all K members. Prints
images/s of training (all members together) for each and the ratios to the separate runs.

    python bench/pack_speed.py [--device auto] [--steps N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from step_profile import sync, write_data  # bench/ is on the path of a bench script

from search.train.config import TrainConfig
from search.train.data import load
from search.train.engine import Trainer, resolve_device
from search.train.pack import Pack

# (architecture, batch size, member counts): ResNet-18 at 28 px is ~40x simple_cnn_v2's work per image, so on a
# CPU it runs smaller batches and packs to fit the two minutes this bench is meant to take there.
CPU_PLAN = [("simple_cnn_v2", 128, (1, 4, 8)), ("resnet18", 8, (1, 4))]
GPU_PLAN = [("simple_cnn_v2", 128, (1, 4, 8, 16, 32)), ("resnet18", 128, (1, 4, 8, 16))]


def members(folder: Path, architecture: str, batch: int, k: int, device: str) -> list[TrainConfig]:
    return [TrainConfig(dataset="pathmnist", data_dir=str(folder), architecture=architecture, batch_size=batch,
                        device=device, lr=1e-3 * (1 + i), dropout=0.1 * (i % 5), seed=i, augmentation="flip")
            for i in range(k)]


def batches(n: int, batch: int, k: int, device: torch.device) -> list[torch.Tensor]:
    return [torch.randperm(n, device=device)[:batch] for _ in range(k)]


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones (a CUDA step timed to its end)."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t0


def separate(cfgs: list[TrainConfig], steps: int, warmup: int) -> float:
    """images/s of K trainers, each training its steps in turn (K trials one after another on one device)."""
    device = resolve_device(cfgs[0].device)
    data = load(cfgs[0].dataset, cfgs[0].data_dir, device, cfgs[0].size)
    elapsed = 0.0
    for t in [Trainer(cfg, data, device) for cfg in cfgs]:
        t.model.train()
        idx = batches(len(data.train), t.cfg.batch_size, 1, device)[0]
        elapsed += timed(lambda t=t, idx=idx: t.step(idx), steps, warmup, device)
    return len(cfgs) * steps * cfgs[0].batch_size / elapsed


def packed(cfgs: list[TrainConfig], steps: int, warmup: int, fused: bool) -> float:
    """images/s of the same K members trained as one pack: fused layers, or the members' models side by side."""
    pack = Pack(cfgs, on_epoch=[None] * len(cfgs), fused=fused)
    pack.fused.train()
    idx = batches(len(pack.data.train), cfgs[0].batch_size, len(cfgs), pack.lead.device)
    elapsed = timed(lambda: pack.step(idx), steps, warmup, pack.lead.device)
    pack.close()
    return len(cfgs) * steps * cfgs[0].batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (CPU 3, GPU 30)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    steps, warmup = args.steps or (30 if cuda else 3), 5 if cuda else 1
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"trial packs: training images/s on {name}, {steps} timed steps after {warmup} warm-up")
    print(f"{'architecture':<14} {'batch':>5} {'K':>3} {'separate':>9} {'fused':>9} {'side by side':>13}   "
          f"fused/separate  side by side/separate")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_data(Path(tmp), 1024)
        for architecture, batch, counts in GPU_PLAN if cuda else CPU_PLAN:
            for k in counts:
                cfgs = members(folder, architecture, batch, k, str(device))
                alone = separate(cfgs, steps, warmup)
                fused, sliced = packed(cfgs, steps, warmup, True), packed(cfgs, steps, warmup, False)
                print(f"{architecture:<14} {batch:>5} {k:>3} {alone:>9,.0f} {fused:>9,.0f} {sliced:>13,.0f}   "
                      f"{fused / alone:>13.2f}x  {sliced / alone:>20.2f}x", flush=True)


if __name__ == "__main__":
    main()
