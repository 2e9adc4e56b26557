"""Training speed: the MedMNIST reference pipeline against this project's engine, measured in one run.

Same model (simple_cnn_v2), batch 128, horizontal-flip augmentation, Adam, on a PathMNIST file in the MedMNIST
layout (generated with the official shapes when none is given). The reference is the MedMNIST official recipe
and the origin report's: medmnist's Dataset with torchvision RandomHorizontalFlip, ToTensor and Normalize, and a
torch DataLoader. Prints images/s for each and their ratio, and the engine's training GFLOP/s
(torch.utils.flop_counter) as a fraction of the same device's matmul GFLOP/s in the precision the engine trains in
(bf16 on a CUDA card that has it, else float32): like with like, the precision printed beside it.

    python bench/epoch_speed.py [--file pathmnist.npz] [--steps 60] [--device auto]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import build_model
from search.train.config import TrainConfig
from search.train.data import load
from search.train.engine import Trainer, resolve_device

OFFICIAL = {"train": 89996, "val": 10004, "test": 7180}


def official_file(folder: Path) -> Path:
    """A PathMNIST-layout file with the official sample counts (random pixels: speed does not look at them)."""
    path = folder / "pathmnist.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in OFFICIAL.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, size=(n, 1), dtype=np.uint8)
    np.savez(path, **arrays)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference(root: Path, device: torch.device, steps: int, warmup: int) -> float:
    import medmnist
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    transform = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean=[0.5], std=[0.5])])
    ds = medmnist.PathMNIST(split="train", root=str(root), transform=transform, download=False)
    loader = DataLoader(ds, batch_size=128, shuffle=True)
    torch.manual_seed(0)
    model = build_model("simple_cnn_v2", in_channels=3, num_classes=9, dropout=0.5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device), y.squeeze(1).long().to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss.item()
    sync(device)
    return steps * 128 / (time.perf_counter() - start)


def engine(root: Path, device: torch.device, steps: int, warmup: int) -> tuple[float, float, float, str]:
    cfg = TrainConfig(dataset="pathmnist", data_dir=str(root), augmentation="flip", batch_size=128,
                      device=str(device), epochs=1)
    t0 = time.perf_counter()
    data = load(cfg.dataset, cfg.data_dir, device)
    load_seconds = time.perf_counter() - t0
    trainer = Trainer(cfg, data, device)
    n = len(data.train)
    order = torch.randperm(n, device=device)
    batch = lambda i: order[(i * 128) % (n - 128):][:128]  # noqa: E731
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step(batch(0))
    flops = counter.get_total_flops()
    for i in range(warmup):
        trainer.step(batch(i))
    sync(device)
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for i in range(steps):
        total += trainer.step(batch(i))
    total.item()
    seconds = time.perf_counter() - start
    return steps * 128 / seconds, flops * steps / seconds / 1e9, load_seconds, trainer.precision


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """The measured matrix-product rate of ``device`` in ``dtype`` (GFLOP/s): the ceiling a training step is
    compared to (bench/gpu_proof.py asks for bf16)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, help="a pathmnist.npz with the official sample counts")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per pipeline")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="epoch-speed-"))
    try:
        if args.file:
            root = args.file.parent
        else:
            official_file(tmp)
            root = tmp
        name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {torch.get_num_threads()} threads")
        print(f"device: {device} ({name}); torch {torch.__version__}; simple_cnn_v2, batch 128, flip, Adam")
        ref = reference(root, device, args.steps, args.warmup)
        print(f"reference (medmnist Dataset + ToTensor/Normalize + DataLoader): {ref:10.0f} images/s")
        eng, gflops, load_s, precision = engine(root, device, args.steps, args.warmup)
        print(f"engine    (uint8 on device, batched augmentation):             {eng:10.0f} images/s"
              f"   (one-time load to device: {load_s:.1f} s)")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        mm = matmul_gflops(device, dtype=dtype)  # in the precision the engine trains in
        print(f"speed-up: {eng / ref:.2f}x the reference")
        print(f"engine training rate ({precision}): {gflops:.1f} GFLOP/s = {gflops / mm:.0%} of {precision} matmul "
              f"({mm:.1f} GFLOP/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
