"""GPU proof: one command that runs every check of the CUDA path and writes its figures to one JSON file.

    python3 bench/gpu_proof.py --out DIR                 # on a CUDA machine: at most about 8 minutes on one H100
    python bench/gpu_proof.py --out DIR --cpu-dry-run    # the same code on the CPU with tiny sizes (a test runs it)

The project need not be installed: run it from the repository root with the dependencies on PYTHONPATH
(docs/benchmarks.md). It installs nothing. Sections, each recorded in DIR/gpu_proof.json and printed:

Checks must hold: one that does not fails the run. Targets are figures the project aims at: each is reported as
met or not met, and never makes the run pass or fail. Sections, each recorded in DIR/gpu_proof.json and printed:

1. ``pytest -m gpu`` over the whole tree (tests/test_gpu.py and the CUDA cases of the other test files). Check: it
   passes, with no test skipped on a GPU.
2. Epoch speed on PathMNIST-shaped data (89,996 train / 10,004 val, 3x28x28, random pixels in the true .npz
   layout): the MedMNIST reference pipeline (medmnist Dataset + RandomHorizontalFlip/ToTensor/Normalize +
   DataLoader, float32, as bench/epoch_speed.py) against the engine, eager and with ``graphs: on``, for
   simple_cnn_v2 and resnet18, batch 128, whole timed epochs (after a cold one); plus simple_cnn_v2 with
   compile: true. Reports images/s, seconds per epoch and the engine's training FLOP rate as a share of the card's
   measured matmul rate in the engine's own precision. Check: every figure was measured, and ``graphs: on`` did
   capture. Targets: simple_cnn_v2 graphed >= 25x the reference and an epoch <= 0.6 s; resnet18 graphed <= 3 s.
3. Graphs, per architecture (simple_cnn_v2, resnet18, resnet50, xception at 28 px, 12,800 training images):
   eager against ``graphs: on``: the capture's cost (warm-up and capture), ms per step, the epoch (and a
   PathMNIST-sized epoch from the step time), the kernels per step and how busy the card is during an epoch.
   Check: every graphed run captured. Targets: simple_cnn_v2 a step <= 0.6 ms and the card busy >= 60%.
4. Packing: ``python -m search start`` on one GPU with 1, 2, 4 and 8 workers on the same data (simple_cnn_v2,
   ``graphs: on``, 2 epochs, 16 trials each); trials per hour from the trials' own start and end times; where
   CUDA MPS can be started, the 4- and 8-worker runs again under MPS. Check: every trial completes. Target:
   4 workers >= 3x the trials per hour of 1; the best number of workers is reported.
5. Trial packs (docs/packs.md): training images/s of K members fused into one model against K lone trainers one
   after another (bench/pack_speed.py) for simple_cnn_v2 and resnet18, batch 128, K = 1, 4, 16, 32; and one
   ``search start --workers 1 --pack 16`` of the packing section's study (16 trials, one pack). Check: every trial
   completes. Targets: the pack of 16 >= 6x the trials per hour of one unpacked worker (the packing section's
   1-worker run) and >= 2x four separate workers under MPS (or without it where MPS cannot start).
6. Real data: simple_cnn_v2 on the real MNIST test set split 8,000 / 2,000 (bench/real_mnist.py). Check: test
   accuracy >= 98.5%.

``--only graphs,speed`` runs some sections (a device budget too short for all of them in one call).
Exit status 0 only if every check holds (1 otherwise; 2 for bad arguments), whatever the targets. A section that
fails is one line in the output and its reason in the JSON; library warnings and logs go to DIR/proof.log.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

PATHMNIST = (89996, 10004, 7180)  # train, val, test: the official PathMNIST counts


@dataclass(frozen=True)
class Plan:
    """What one run measures; the dry run is the same code with tiny sizes on the CPU."""
    dry: bool
    counts: tuple[int, int, int]
    batch: int  # the same for the reference and the engine
    speed_models: tuple[str, ...]
    graphs_models: tuple[str, ...]
    graphs_train: int  # training images of the graphs section's file
    packing_workers: tuple[int, ...]
    mps_workers: tuple[int, ...]
    packing_trials: int
    packing_epochs: int
    pack_models: tuple[str, ...]
    pack_sizes: tuple[int, ...]  # members of a pack whose images/s are measured
    pack_search: int  # --pack of the one-worker search (its study runs this many trials: one pack)
    mnist_epochs: int
    matmul_n: int
    timeout_s: int  # per subprocess


FULL = Plan(False, PATHMNIST, 128, ("simple_cnn_v2", "resnet18"), ("simple_cnn_v2", "resnet18", "resnet50",
                                                                    "xception"), 12800,
            (1, 2, 4, 8), (4, 8), 16, 2, ("simple_cnn_v2", "resnet18"), (1, 4, 16, 32), 16, 15, 8192, 300)
# The dry run leaves resnet18 out of the speed section: a CPU epoch of it would take minutes (its 28-px stem
# keeps full resolution); tests/test_sizes.py and tests/test_models.py run it on the CPU.
# Its packing section runs 2 workers only: every `search start` costs a supervisor and a worker process that each
# import torch and optuna (seconds of CPU), and the test that runs the dry run must stay near a minute.
DRY = Plan(True, (160, 64, 64), 32, ("simple_cnn_v2",), ("simple_cnn_v2",), 160, (2,), (), 2, 1, ("simple_cnn_v2",),
           (1, 2), 2, 2, 256, 240)
SECTIONS = ("pytest_gpu", "speed", "graphs", "packing", "packs", "real_mnist")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: PYTHONPATH made absolute (children run in other folders)."""
    env = dict(os.environ)
    parts = [str(REPO)] + [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.update(extra)
    return env


def write_pathmnist(folder: Path, counts: tuple[int, int, int]) -> Path:
    """A pathmnist.npz in medmnist's layout (uint8 N x 28 x 28 x 3, labels N x 1); random pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, size=(n, 1), dtype=np.uint8)
    np.savez(folder / "pathmnist.npz", **arrays)
    return folder


# --- 1. pytest -m gpu ---------------------------------------------------------------------------------------


GPU_MARK = re.compile(r"\bmark\.gpu\b|^gpu = pytest\.mark\.gpu", re.MULTILINE)


def gpu_test_files() -> list[str]:
    """Every test file with a test marked ``gpu``. Only those are collected: collecting the whole tree would import
    test modules whose own dependencies (kubernetes-validate, ...) the GPU machine need not have."""
    tests = (REPO / "tests").glob("test_*.py")
    return sorted(str(p.relative_to(REPO)) for p in tests if GPU_MARK.search(p.read_text()))


def check_pytest(out: Path, plan: Plan) -> dict[str, Any]:
    xml = out / "pytest-gpu.xml"
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}", *files]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), check=False, capture_output=True, text=True,
                          timeout=plan.timeout_s)
    (out / "pytest-gpu.log").write_text(proc.stdout + proc.stderr)
    suite = ET.parse(xml).getroot() if xml.exists() else None
    suite = suite.find("testsuite") if suite is not None and suite.tag == "testsuites" else suite
    counts = {k: int(suite.get(k, 0)) if suite is not None else 0 for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = proc.returncode == 0 and counts["failures"] == counts["errors"] == 0 and (
        plan.dry or (counts["skipped"] == 0 and passed > 0))
    return {"ok": ok, "passed": passed, **counts, "files": files, "seconds": round(time.perf_counter() - t0, 1),
            "command": " ".join(cmd[2:]), "log": "pytest-gpu.log"}


# --- 2. epoch speed -----------------------------------------------------------------------------------------


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def matmul_tflops(device: torch.device, n: int, precision: str = "bf16", reps: int = 10) -> float:
    """The measured matrix-product rate of ``device`` in ``precision`` (TFLOP/s): the ceiling the engine, training
    in that precision, is compared to (like with like)."""
    from epoch_speed import matmul_gflops  # bench/ is on sys.path (above)

    return matmul_gflops(device, n, reps, dtype=DTYPES[precision]) / 1000


def reference_epoch(root: Path, device: torch.device, arch: str, batch: int) -> dict[str, float]:
    """One whole epoch of the MedMNIST reference pipeline (as bench/epoch_speed.py), after 5 warm-up batches."""
    import medmnist
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset

    from models import build_model

    transform = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean=[0.5], std=[0.5])])
    ds = medmnist.PathMNIST(split="train", root=str(root), transform=transform, download=False)
    # Subset: medmnist's __len__ asserts the official count, which the dry run's tiny file does not have.
    ds = Subset(ds, range(len(ds.imgs)))
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, num_classes=9, dropout=0.5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def run(batches: int | None) -> tuple[int, float]:
        loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
        sync(device)
        t0, n = time.perf_counter(), 0
        for i, (x, y) in enumerate(loader):
            if batches is not None and i == batches:
                break
            x, y = x.to(device), y.squeeze(1).long().to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += x.shape[0]
        loss.item()
        sync(device)
        return n, time.perf_counter() - t0

    # The reference as MedMNIST's code runs it: cuDNN's default algorithm choice (the engine turns on benchmark mode).
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        run(5)
        n, seconds = run(None)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return {"images_per_second": n / seconds, "epoch_seconds": seconds}


def engine_epochs(root: Path, device: torch.device, arch: str, batch: int, *, compile: bool = False,
                  graphs: str = "off", profile: bool = False) -> dict[str, Any]:
    """Two whole epochs of the engine's Trainer: the first (cold: cuDNN autotuning, compilation, the capture) and the
    second; with ``profile``, a third under the profiler (kernels per step, the card's busy share)."""
    from torch.utils.flop_counter import FlopCounterMode

    from search.train.config import TrainConfig
    from search.train.data import load
    from search.train.engine import Trainer

    cfg = TrainConfig(dataset="pathmnist", data_dir=str(root), architecture=arch, augmentation="flip",
                      batch_size=batch, device=str(device), epochs=3, compile=compile, graphs=graphs)
    t0 = time.perf_counter()
    data = load(cfg.dataset, cfg.data_dir, device)
    load_s = time.perf_counter() - t0
    trainer = Trainer(cfg, data, device)
    flops = None
    if not compile and graphs == "off":  # counted on the eager model: one training step (forward and backward)
        with FlopCounterMode(display=False) as counter:
            trainer.step(torch.arange(batch, device=device))
        flops = counter.get_total_flops()
    times = []
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        trainer.epoch()
        sync(device)
        times.append(time.perf_counter() - t0)
    images = trainer.steps_per_epoch * batch
    result = {"images_per_second": images / times[1], "epoch_seconds": times[1], "first_epoch_seconds": times[0],
              "step_ms": times[1] / trainer.steps_per_epoch * 1e3, "steps_per_epoch": trainer.steps_per_epoch,
              "load_seconds": load_s, "precision": trainer.precision, "compiled": trainer.compiled,
              "graphs": graphs, "graphed": trainer.graphed, "capture_seconds": trainer.capture_seconds}
    if flops is not None:
        result["tflops"] = flops * trainer.steps_per_epoch / times[1] / 1e12
    if profile:
        result.update(profile_epoch(trainer, device))
    return result


@contextlib.contextmanager
def stderr_to_log() -> Iterator[None]:
    """The profiler's C++ side writes its stage lines straight to file descriptor 2: into proof.log with them."""
    target = next((h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
    if target is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(target, "a") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_epoch(trainer: Any, device: torch.device) -> dict[str, float]:
    """One more epoch under torch.profiler: kernels per step and the card's busy share of the epoch's wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with warnings.catch_warnings(), stderr_to_log(), profile(activities=activities) as prof:
        warnings.simplefilter("ignore")
        sync(device)
        t0 = time.perf_counter()
        trainer.epoch()
        sync(device)
        wall = time.perf_counter() - t0
    kernels = [e for e in prof.key_averages() if str(getattr(e, "device_type", "")).endswith("CUDA")
               and e.self_device_time_total > 0]
    steps = trainer.steps_per_epoch
    return {"kernels_per_step": sum(e.count for e in kernels) / steps,
            "device_busy": sum(e.self_device_time_total for e in kernels) / 1e6 / wall if kernels else 0.0}


def check_speed(out: Path, plan: Plan, device: torch.device, root: Path) -> dict[str, Any]:
    peaks: dict[str, float] = {}
    models: dict[str, Any] = {}
    for arch in plan.speed_models:
        ref = reference_epoch(root, device, arch, plan.batch)
        eng = engine_epochs(root, device, arch, plan.batch)
        graphed = engine_epochs(root, device, arch, plan.batch, graphs="on")
        if eng["precision"] not in peaks:
            peaks[eng["precision"]] = matmul_tflops(device, plan.matmul_n, eng["precision"])
        eng["share_of_matmul"] = eng["tflops"] / peaks[eng["precision"]]  # both in the engine's precision
        models[arch] = {"reference": ref, "engine": eng, "graphed": graphed,
                        "speedup": eng["images_per_second"] / ref["images_per_second"],
                        "graphed_speedup": graphed["images_per_second"] / ref["images_per_second"]}
    compiled = engine_epochs(root, device, "simple_cnn_v2", plan.batch, compile=True)
    eager = models["simple_cnn_v2"]["engine"]
    v2, r18 = models["simple_cnn_v2"], models.get("resnet18")
    figures = [m[k]["images_per_second"] for m in models.values() for k in ("reference", "engine", "graphed")]
    captured = plan.dry or all(m["graphed"]["graphed"] for m in models.values())
    targets = {"simple_cnn_v2_graphed_ge_25x_reference": v2["graphed_speedup"] >= 25,
               "simple_cnn_v2_graphed_epoch_le_0_6s": v2["graphed"]["epoch_seconds"] <= 0.6}
    if r18 is not None:
        targets["resnet18_graphed_epoch_le_3s"] = r18["graphed"]["epoch_seconds"] <= 3.0
    return {"ok": captured and all(f > 0 for f in figures), "checked": "every figure measured; graphs: on captured",
            "train_images": plan.counts[0], "batch_size": plan.batch, "matmul_tflops": peaks,
            "models": models,
            "compile_simple_cnn_v2": {**compiled,
                                      "warm_epoch_vs_eager": eager["epoch_seconds"] / compiled["epoch_seconds"],
                                      "two_epochs_vs_eager": (eager["first_epoch_seconds"] + eager["epoch_seconds"])
                                      / (compiled["first_epoch_seconds"] + compiled["epoch_seconds"])},
            "targets": targets}


# --- 3. graphs per architecture ----------------------------------------------------------------------------


def check_graphs(plan: Plan, device: torch.device, work: Path) -> dict[str, Any]:
    """Eager against graphs: on per architecture, on a smaller PathMNIST-shaped file (whole epochs of it)."""
    root = write_pathmnist(work / "pathmnist-graphs", (plan.graphs_train, plan.counts[1] // 4, 64))
    models: dict[str, Any] = {}
    for arch in plan.graphs_models:
        eager = engine_epochs(root, device, arch, plan.batch, profile=True)
        graphed = engine_epochs(root, device, arch, plan.batch, graphs="on", profile=True)
        full_steps = plan.counts[0] // plan.batch
        for r in (eager, graphed):
            r["pathmnist_epoch_seconds_estimate"] = r["step_ms"] * full_steps / 1e3
        models[arch] = {"eager": eager, "graphed": graphed, "step_speedup": eager["step_ms"] / graphed["step_ms"]}
    v2 = models.get("simple_cnn_v2")
    targets = {} if v2 is None else {"simple_cnn_v2_step_le_0_6ms": v2["graphed"]["step_ms"] <= 0.6,
                                     "simple_cnn_v2_card_busy_ge_60pct": v2["graphed"]["device_busy"] >= 0.6}
    captured = plan.dry or all(m["graphed"]["graphed"] for m in models.values())
    return {"ok": captured, "checked": "graphs: on captured for every architecture", "train_images": plan.graphs_train,
            "batch_size": plan.batch, "models": models, "targets": targets}


# --- 3. packing ---------------------------------------------------------------------------------------------

STUDY = """\
name: {name}
dataset: pathmnist
data_dir: {data}
metric: val_acc
epochs: {epochs}
trials: {trials}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
space:
  lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
fixed:
  architecture: simple_cnn_v2
  batch_size: {batch}
  augmentation: flip
  graphs: "on"
"""


def packing_run(work: Path, out: Path, plan: Plan, root: Path, workers: int, tag: str,
                env: dict[str, str], pack: int = 1) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    name = f"pack-{tag}"
    spec = work / f"{name}.yaml"
    budget = max(plan.packing_trials, pack)
    spec.write_text(STUDY.format(name=name, data=root, epochs=plan.packing_epochs, trials=budget, batch=plan.batch))
    db = work / f"{name}.db"
    cmd = [sys.executable, "-m", "search", "start", "--study", str(spec), "--workers", str(workers),
           "--storage", f"sqlite:///{db}", "--pack", str(pack)] + (["--devices", "cpu"] if plan.dry else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, check=False, capture_output=True, text=True, timeout=plan.timeout_s)
    wall = time.perf_counter() - t0
    (out / f"packing-{tag}.log").write_text(proc.stdout + proc.stderr)
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials if db.exists() else []
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() \
        if done else 0.0
    return {"ok": proc.returncode == 0 and len(done) == budget, "workers": workers, "pack": pack,
            "complete": len(done), "trials": len(trials), "wall_seconds": wall, "trial_span_seconds": span,
            "trials_per_hour": len(done) / span * 3600 if span else 0.0,
            "mean_trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
            / max(1, len(done)), "log": f"packing-{tag}.log"}


def start_mps(work: Path) -> tuple[dict[str, str] | None, str]:
    """Start a private CUDA MPS daemon (its own pipe folder, so only our workers use it); None and why if not."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return None, "nvidia-cuda-mps-control is not on the PATH"
    pipes, logs = work / "mps-pipe", work / "mps-log"
    pipes.mkdir()
    logs.mkdir()
    env = child_env(CUDA_MPS_PIPE_DIRECTORY=str(pipes), CUDA_MPS_LOG_DIRECTORY=str(logs))
    try:
        proc = subprocess.run([control, "-d"], env=env, check=False, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip()
            return None, f"nvidia-cuda-mps-control -d failed ({proc.returncode}): {why}"
        probe = subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda'); print('ok')"],
                               env=env, check=False, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        stop_mps(env)
        return None, f"MPS could not be started: {type(err).__name__}: {err}"
    if probe.stdout.strip() != "ok":
        stop_mps(env)
        return None, "a CUDA process could not start under the MPS daemon"
    return env, "started"


def stop_mps(env: dict[str, str]) -> None:
    try:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=env, check=False, capture_output=True,
                       text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass  # the daemon exits with the machine; the figures are what matters here


def check_packing(out: Path, plan: Plan, root: Path, work: Path) -> dict[str, Any]:
    runs = {f"{k}": packing_run(work, out, plan, root, k, f"{k}w", child_env()) for k in plan.packing_workers}
    base = runs["1"]["trials_per_hour"] if "1" in runs else 0.0
    for r in runs.values():
        r["vs_one_worker"] = r["trials_per_hour"] / base if base else None
    result: dict[str, Any] = {"ok": all(r["ok"] for r in runs.values()), "checked": "every trial completed",
                              "epochs": plan.packing_epochs, "trials_each": plan.packing_trials, "runs": runs,
                              "best_workers": max(runs, key=lambda k: runs[k]["trials_per_hour"]),
                              "targets": {"4_workers_ge_3x_one": (runs.get("4", {}).get("vs_one_worker") or 0) >= 3}}
    if plan.mps_workers:
        torch.cuda.empty_cache()  # this process's cached blocks would only crowd the MPS clients
        env, why = start_mps(work)
        mps: dict[str, Any] = {"available": env is not None, "note": why, "runs": {}}
        if env is not None:
            try:
                for k in plan.mps_workers:
                    run = packing_run(work, out, plan, root, k, f"{k}w-mps", env)
                    plain = runs[str(k)]["trials_per_hour"]
                    run["mps_vs_no_mps"] = run["trials_per_hour"] / plain if plain else 0.0
                    run["vs_one_worker"] = run["trials_per_hour"] / base if base else None
                    mps["runs"][str(k)] = run
            finally:
                stop_mps(env)
            result["ok"] = result["ok"] and all(r["ok"] for r in mps["runs"].values())
        result["mps"] = mps
    return result


# --- 5. trial packs -----------------------------------------------------------------------------------------


def check_packs(out: Path, plan: Plan, root: Path, work: Path, packing: dict[str, Any] | None) -> dict[str, Any]:
    """Fused packs against lone trainers (images/s), and a one-worker search of one pack against the packing
    section's unpacked workers (trials per hour)."""
    import pack_speed

    data = write_pathmnist(work / "pathmnist-packs", (plan.graphs_train, 256, 64))
    steps, warmup = (3, 1) if plan.dry else (30, 5)
    batch = plan.batch
    speed: dict[str, Any] = {}
    for arch in plan.pack_models:
        for k in plan.pack_sizes:
            cfgs = pack_speed.members(data, arch, batch, k, "cpu" if plan.dry else "cuda")
            alone = pack_speed.separate(cfgs, steps, warmup)
            fused = pack_speed.packed(cfgs, steps, warmup, True)
            speed[f"{arch} K={k}"] = {"separate_images_per_second": alone, "fused_images_per_second": fused,
                                      "fused_vs_separate": fused / alone}
    run = packing_run(work, out, plan, root, 1, f"pack{plan.pack_search}", child_env(), pack=plan.pack_search)
    base = ((packing or {}).get("runs", {}).get("1") or {}).get("trials_per_hour") or 0.0
    mps = (packing or {}).get("mps", {}).get("runs", {}).get("4") or (packing or {}).get("runs", {}).get("4") or {}
    four = mps.get("trials_per_hour") or 0.0
    run["vs_one_worker"] = run["trials_per_hour"] / base if base else None
    run["vs_four_workers"] = run["trials_per_hour"] / four if four else None
    return {"ok": run["ok"], "checked": "every trial of the packed search completed", "batch_size": batch,
            "images_per_second": speed, "search": run,
            "four_workers_compared": "under MPS" if "mps_vs_no_mps" in mps else "without MPS" if mps else "none",
            "targets": {f"pack_{plan.pack_search}_ge_6x_one_worker": (run["vs_one_worker"] or 0) >= 6,
                        f"pack_{plan.pack_search}_ge_2x_four_workers": (run["vs_four_workers"] or 0) >= 2}}


# --- 6. real MNIST ------------------------------------------------------------------------------------------


def check_real_mnist(out: Path, plan: Plan, device: torch.device, shared: Path, work: Path) -> dict[str, Any]:
    import real_mnist

    from search.train import engine

    folder = work / "mnist"
    folder.mkdir()
    if plan.dry:  # tiny generated IDX files: the same code path, no accuracy to expect
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 300), ("t10k", 100)):
            labels = rng.integers(0, 10, size=n).astype(np.uint8)
            images = np.clip(labels[:, None, None] * 20 + rng.normal(0, 10, (n, 28, 28)), 0, 255).astype(np.uint8)
            real_mnist.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
            real_mnist.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        source = "generated (dry run)"
    else:
        if not (shared / "t10k-images-idx3-ubyte.gz").is_file():
            return {"ok": False, "error": f"the real MNIST test set is not at {shared}; pass --mnist DIR"}
        real_mnist.split_real_mnist(shared, folder)
        source = f"{shared} (test set split 8,000 / 2,000)"
    cfg = real_mnist.config(folder, plan.mnist_epochs).replace(device=str(device), batch_size=plan.batch)
    m = engine.train(cfg, out / "real-mnist", progress=False)
    ok = plan.dry or m["test_acc"] >= 0.985
    return {"ok": ok, "data": source, "test_acc": m["test_acc"], "test_auc": m["test_auc"], "target": 0.985,
            "epochs": m["epochs"], "best_epoch": m["best_epoch"], "seconds": m["seconds"],
            "precision": m["precision"]}


# --- the run ------------------------------------------------------------------------------------------------


def section(name: str, results: dict[str, Any], fn: Callable[[], dict[str, Any]], out: Path) -> None:
    """Run one check; its figures join DIR/gpu_proof.json at once, so a run cut short keeps the sections it did."""
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as err:
        logging.getLogger("gpu_proof").exception("section %s failed", name)
        results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
    results[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[{results[name]['section_seconds']:6.1f} s] {name}: {'ok' if results[name]['ok'] else 'FAILED'}"
          + (f" ({results[name]['error']})" if "error" in results[name] else ""), flush=True)
    (out / "gpu_proof.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def quiet(out: Path) -> None:
    """Library warnings and log records go to DIR/proof.log, never to the terminal."""
    handler = logging.FileHandler(out / "proof.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("search", "optuna"):
        logging.getLogger(name).propagate = True
        logging.getLogger(name).handlers[:] = []
    logging.captureWarnings(True)
    warnings.simplefilter("default")


def summary_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    s = r.get("speed", {})
    for arch, m in s.get("models", {}).items():
        e, g, ref = m["engine"], m["graphed"], m["reference"]
        peak = s["matmul_tflops"][e["precision"]]
        lines.append(f"speed {arch}: reference {ref['images_per_second']:,.0f} img/s "
                     f"({ref['epoch_seconds']:.2f} s/epoch)"
                     f" | engine {e['images_per_second']:,.0f} img/s ({e['epoch_seconds']:.2f} s/epoch, first "
                     f"{e['first_epoch_seconds']:.2f} s, {e['precision']}) {m['speedup']:.1f}x"
                     f" | graphed {g['images_per_second']:,.0f} img/s ({g['epoch_seconds']:.2f} s/epoch, graphed="
                     f"{g['graphed']}) {m['graphed_speedup']:.1f}x | eager {e['tflops']:.2f} TFLOP/s = "
                     f"{e['share_of_matmul']:.1%} of {e['precision']} matmul ({peak:.1f} TFLOP/s)")
    if "compile_simple_cnn_v2" in s:
        c = s["compile_simple_cnn_v2"]
        lines.append(f"compile simple_cnn_v2 (compiled={c['compiled']}): first epoch {c['first_epoch_seconds']:.2f} s, "
                     f"then {c['epoch_seconds']:.2f} s/epoch; warm epoch {c['warm_epoch_vs_eager']:.2f}x eager, "
                     f"first two epochs {c['two_epochs_vs_eager']:.2f}x eager")
    for arch, m in r.get("graphs", {}).get("models", {}).items():
        e, g = m["eager"], m["graphed"]
        lines.append(f"graphs {arch}: eager {e['step_ms']:.2f} ms/step, {e['kernels_per_step']:.0f} kernels/step, "
                     f"busy {e['device_busy']:.0%} | graphed {g['step_ms']:.2f} ms/step (graphed={g['graphed']}, "
                     f"capture {g['capture_seconds']:.2f} s), busy {g['device_busy']:.0%} | {m['step_speedup']:.2f}x; "
                     f"PathMNIST epoch {e['pathmnist_epoch_seconds_estimate']:.2f} -> "
                     f"{g['pathmnist_epoch_seconds_estimate']:.2f} s")
    p = r.get("packing", {})
    mps_runs = p.get("mps", {}).get("runs", {})
    for k, run in [(k, v) for k, v in p.get("runs", {}).items()] + [(f"{k} (MPS)", v) for k, v in mps_runs.items()]:
        lines.append(f"packing {k} worker(s): {run['complete']}/{run['trials']} complete, "
                     f"{run['trials_per_hour']:,.0f} trials/h"
                     + (f" ({run['vs_one_worker']:.2f}x one worker), " if run["vs_one_worker"] else ", ")
                     + f"{run['mean_trial_seconds']:.1f} s/trial, {run['wall_seconds']:.0f} s wall")
    if "mps" in p:
        lines.append(f"MPS: {p['mps']['note']}")
    if "best_workers" in p:
        lines.append(f"packing: the most trials per hour with {p['best_workers']} worker(s) on one card")
    pk = r.get("packs", {})
    for name, m in pk.get("images_per_second", {}).items():
        lines.append(f"packs {name}: fused {m['fused_images_per_second']:,.0f} img/s, lone trainers "
                     f"{m['separate_images_per_second']:,.0f} img/s ({m['fused_vs_separate']:.2f}x)")
    if "search" in pk:
        run = pk["search"]
        against = (("vs_one_worker", "one unpacked worker"),
                   ("vs_four_workers", f"4 workers {pk['four_workers_compared']}"))
        ratios = [f"{run[k]:.2f}x {what}" for k, what in against if run.get(k)]
        lines.append(f"packs: 1 worker --pack {run['pack']}: {run['complete']}/{run['trials']} complete, "
                     f"{run['trials_per_hour']:,.0f} trials/h" + (f" ({', '.join(ratios)})" if ratios else ""))
    rm = r.get("real_mnist", {})
    if "test_acc" in rm:
        lines.append(f"real MNIST: test_acc {rm['test_acc']:.4f} (check: >= {rm['target']}), {rm['epochs']} epochs, "
                     f"{rm['seconds']:.0f} s, {rm['precision']}")
    pt = r.get("pytest_gpu", {})
    if "tests" in pt:
        lines.append(f"pytest -m gpu: {pt['passed']} passed, {pt['failures']} failed, {pt['errors']} errors, "
                     f"{pt['skipped']} skipped")
    return lines


def sections_arg(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section {bad[0] if bad else text!r}; valid: {', '.join(SECTIONS)}")
    return names


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gpu_proof: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    ap = _OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_proof.json and the logs")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU: the same code path")
    ap.add_argument("--mnist", type=Path, help="folder with the real MNIST t10k IDX files (default: "
                                               "../shared/data/mnist beside the repository, or shared/data/mnist)")
    ap.add_argument("--only", type=sections_arg, default=SECTIONS, metavar="S1,S2",
                    help=f"run these sections only (default: all of {', '.join(SECTIONS)})")
    args = ap.parse_args(argv)
    plan = DRY if args.cpu_dry_run else FULL
    if not plan.dry and not torch.cuda.is_available():
        print("gpu_proof: no CUDA GPU is visible (torch.cuda.is_available() is False); "
              "run on a GPU machine or pass --cpu-dry-run", file=sys.stderr)
        return 2
    import real_mnist

    # --mnist, else ../shared/data/mnist beside the repository, else shared/data/mnist inside it (a copy carried
    # to a machine that has only the working tree)
    shared = args.mnist or next((p for p in (real_mnist.SHARED, REPO / "shared" / "data" / "mnist")
                                 if (p / "t10k-images-idx3-ubyte.gz").is_file()), real_mnist.SHARED)
    args.out.mkdir(parents=True, exist_ok=True)
    quiet(args.out)
    device = torch.device("cpu" if plan.dry else "cuda:0")
    if plan.dry:
        # One thread: the tiny dry-run batches gain nothing from more, and on a shared 2-core machine OpenMP's
        # spinning threads made a 5-step epoch take seconds.
        torch.set_num_threads(1)
    from search.train.engine import device_label

    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "mode": "cpu-dry-run" if plan.dry else "gpu", "device": device_label(device), "torch": torch.__version__,
        "python": sys.version.split()[0], "cuda": torch.version.cuda, "plan": plan.__dict__}
    print(f"gpu_proof ({results['mode']}) on {results['device']}, torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-proof-"))
    try:
        root = write_pathmnist(work / "pathmnist", plan.counts)
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "pytest_gpu": lambda: check_pytest(args.out, plan),
            "speed": lambda: check_speed(args.out, plan, device, root),
            "graphs": lambda: check_graphs(plan, device, work),
            "packing": lambda: check_packing(args.out, plan, root, work),
            "packs": lambda: check_packs(args.out, plan, root, work, results.get("packing")),
            "real_mnist": lambda: check_real_mnist(args.out, plan, device, shared, work)}
        for name in SECTIONS:
            if name in args.only:
                section(name, results, runs[name], args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done = [k for k in SECTIONS if k in results]
    results["checks"] = {k: results[k]["ok"] for k in done}
    # Targets are reported, never a pass: they do not enter "ok".
    results["targets"] = {f"{k}.{t}": met for k in done for t, met in results[k].get("targets", {}).items()}
    results["ok"] = all(results["checks"].values())
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "gpu_proof.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    for line in summary_lines(results):
        print(line)
    for name, met in results["targets"].items():
        print(f"target {name}: {'met' if met else 'NOT met'}")
    failed = ", ".join(k for k, v in results["checks"].items() if not v)
    met = sum(results["targets"].values())
    print(f"gpu_proof: {'every check holds' if results['ok'] else 'FAILED: ' + failed}; targets met: {met} of "
          f"{len(results['targets'])} (reported, not checked) ({results['seconds']:.0f} s) -> "
          f"{args.out / 'gpu_proof.json'}", flush=True)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
