"""The CUDA path: mixed precision, data resident on the card, reproducibility, out-of-memory, the device attribute.

Tests marked ``gpu`` need a CUDA GPU and skip with a reason elsewhere (CI runs them as skips); bench/gpu_proof.py
runs ``pytest -m gpu`` on a GPU machine. The unmarked tests here check the same behaviour on the CPU: precision
choices, the device label, and a real out-of-memory error (torch's own exception class) failing one trial of a
real SQLite study while the worker goes on.
"""
from __future__ import annotations

import os
import subprocess
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from models import register_model, registry
from search.errors import SearchError
from search.hpo.objective import Objective
from search.hpo.storage import open_storage
from search.hpo.studies import load_study
from search.hpo.supervisor import ensure_study
from search.train import engine
from search.train.config import TrainConfig
from search.train.data import Split, load
from tests.support.cli import cli_env, search_cmd
from tests.support.data import write_medmnist_npz

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU is visible (torch.cuda.is_available() is False)")

# --- an architecture that runs out of memory for batches above 32 -----------------------------------------

OOM_ABOVE = 32
_probes: list[weakref.ref] = []  # every probe model built, to prove a failed trial's model is freed


class _OomProbe(nn.Module):
    """simple_cnn_v1's shape, but a training batch above 32 runs out of memory.

    On CUDA the error is real: it first holds 256 MiB (as activations would), then asks the allocator for 1 PiB.
    On the CPU it raises torch's own out-of-memory exception, the class the CUDA allocator raises.
    """

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                 nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * 16, num_classes))
        self.hog: torch.Tensor | None = None
        _probes.append(weakref.ref(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > OOM_ABOVE:
            if x.is_cuda:
                self.hog = torch.empty(256 << 20, dtype=torch.uint8, device=x.device)
                torch.empty(1 << 50, dtype=torch.uint8, device=x.device)  # 1 PiB: no card has it
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.00 PiB (batch {x.shape[0]})")
        return self.net(x)


def oom_probe_test(*, in_channels: int, num_classes: int, dropout: float = 0.5) -> nn.Module:
    return _OomProbe(in_channels=in_channels, num_classes=num_classes, dropout=dropout)


@pytest.fixture
def oom_probe_registered():
    """The probe is in the model registry for one test only: other tests check the registry's exact names."""
    register_model("oom_probe_test", reference="tests/test_gpu.py")(oom_probe_test)
    yield
    registry._REGISTRY.pop("oom_probe_test")  # our own registry has no public removal; tests alone need one
    registry.MODEL_REFERENCES.pop("oom_probe_test")


def _run_like_a_worker(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial:
    """One ticket of a supervised worker (search/hpo/worker.py): one trial, every exception caught."""
    done: list[optuna.trial.FrozenTrial] = []
    study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                   callbacks=[lambda _s, t: done.append(t)])
    return done[-1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=[gpu, needs_cuda])])
def test_out_of_memory_fails_its_trial_with_the_batch_size_and_the_worker_goes_on(tmp_path, device,
                                                                                  oom_probe_registered):
    spec_file = tmp_path / "oom.yaml"
    spec_file.write_text("name: oom\ndataset: digits\nepochs: 1\ntrials: 3\nsampler: {name: random, seed: 0}\n"
                         "pruner: {name: none}\nspace:\n  batch_size: {type: categorical, choices: [16, 64]}\n"
                         "fixed:\n  architecture: oom_probe_test\n")
    spec = load_study(str(spec_file))
    url = f"sqlite:///{tmp_path / 'oom.db'}"
    ensure_study(spec, url)
    study = optuna.load_study(study_name="oom", storage=open_storage(url))
    for bs in (16, 64, 16):
        study.enqueue_trial({"batch_size": bs})
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objective = Objective(spec, device)

    first = _run_like_a_worker(study, objective)  # loads the data once, as a worker's first trial does
    assert first.state == TrialState.COMPLETE, first.user_attrs
    baseline = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    oom = _run_like_a_worker(study, objective)
    assert oom.state == TrialState.FAIL
    assert oom.user_attrs["reason"] == "CUDA out of memory at batch_size 64"
    assert oom.params == {"batch_size": 64}
    # the failed trial's model (and on CUDA the memory it held) is gone before the next trial starts
    assert _probes and all(ref() is None for ref in _probes), "a finished trial's model is still referenced"
    if device.startswith("cuda"):
        assert torch.cuda.memory_allocated() <= baseline + (16 << 20), (baseline, torch.cuda.memory_allocated())
    after = _run_like_a_worker(study, objective)
    assert after.state == TrialState.COMPLETE, after.user_attrs
    assert [t.state for t in optuna.load_study(study_name="oom", storage=url).trials] == [
        TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


# --- precision and device on the CPU ----------------------------------------------------------------------


def test_precision_on_the_cpu_auto_is_fp32_bf16_is_cpu_autocast_fp16_is_refused():
    cpu = torch.device("cpu")
    assert engine.resolve_precision("auto", cpu) is None
    assert engine.resolve_precision("fp32", cpu) is None
    assert engine.resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(SearchError, match="precision fp16 needs a CUDA GPU") as err:
        engine.resolve_precision("fp16", cpu)
    assert "\n" not in err.value.format_message()


def test_bf16_on_the_cpu_trains_and_fp16_fails_before_training():
    cfg = TrainConfig(dataset="digits", epochs=1, batch_size=64, device="cpu", precision="bf16")
    r = engine.fit(cfg)
    assert r.trainer.precision == "bf16" and r.trainer.compiled is False
    assert r.best["val_acc"] > 0.3  # ten classes: chance is 0.1
    with pytest.raises(SearchError, match="fp16"):
        engine.fit(cfg.replace(precision="fp16"))


def test_compile_is_ignored_on_the_cpu():
    r = engine.fit(TrainConfig(dataset="digits", epochs=1, batch_size=64, device="cpu", compile=True))
    assert r.trainer.compiled is False and r.history


def test_the_cpu_device_label_is_cpu():
    assert engine.device_label(torch.device("cpu")) == "cpu"


# --- on a CUDA GPU ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory) -> Path:
    """PathMNIST-layout data, 9 classes told apart by brightness: a model must beat chance (1/9) clearly."""
    folder = tmp_path_factory.mktemp("gpu-data")
    write_medmnist_npz(folder / "pathmnist.npz", channels=3, classes=9, counts=(6144, 1024, 1024))
    return folder


def _cfg(folder: Path, **kw) -> TrainConfig:
    base = {"dataset": "pathmnist", "data_dir": str(folder), "epochs": 2, "batch_size": 128, "lr": 2e-3,
            "device": "cuda:0", "augmentation": "flip", "seed": 0}
    return TrainConfig(**{**base, **kw})


@gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp32", "fp16"])
def test_engine_learns_on_cuda(gpu_data, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    r = engine.fit(_cfg(gpu_data, precision=precision))
    assert r.trainer.precision == precision and r.trainer.device.type == "cuda"
    assert r.outcome == "completed" and r.best["val_acc"] > 0.5, r.history  # chance is 0.11


@gpu
@needs_cuda
def test_auto_precision_is_bf16_on_a_card_that_has_it(gpu_data):
    trainer = engine.Trainer(_cfg(gpu_data), load("pathmnist", str(gpu_data), torch.device("cuda:0")),
                             torch.device("cuda:0"))
    assert trainer.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


@gpu
@needs_cuda
def test_compiled_model_learns_on_cuda(gpu_data):
    r = engine.fit(_cfg(gpu_data, compile=True))
    assert r.trainer.compiled and r.best["val_acc"] > 0.5, r.history


@gpu
@needs_cuda
@pytest.mark.parametrize("graphs", ["off", "on"])
def test_data_stay_on_the_device_no_host_copy_per_batch(gpu_data, graphs):
    from torch.profiler import ProfilerActivity, profile

    device = torch.device("cuda:0")
    data = load("pathmnist", str(gpu_data), device)
    assert data.train.images.is_cuda and data.train.labels.is_cuda and data.val.images.is_cuda
    # the pathmnist study's heaviest augmentation: every random number and constant must live on the card too
    trainer = engine.Trainer(_cfg(gpu_data, augmentation="dihedral+crop+color", graphs=graphs), data, device)
    trainer.epoch()  # warm up: cuDNN benchmarking, the allocator, the augmentation's constants (and the capture)
    assert trainer.graphed is (graphs == "on")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.epoch()
        torch.cuda.synchronize()
    events = prof.events()
    names = [e.name for e in events]
    dtoh = sum("Memcpy DtoH" in n for n in names)
    htod = sum("Memcpy HtoD" in n for n in names)
    steps = trainer.steps_per_epoch
    assert steps >= 40
    # the profiler saw the epoch (an empty trace would pass below): at least a kernel a step, or a graph launch a step
    if graphs == "on":
        launches = sum("cudaGraphLaunch" in n for n in names)
        assert launches >= steps, (launches, steps)
    else:
        kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
        assert len(kernels) >= steps, (len(kernels), steps)
    # one device-to-host read per epoch (the summed loss); a copy per batch would show `steps` of them
    assert dtoh <= 3 and htod <= 3, (steps, dtoh, htod)


@gpu
@needs_cuda
def test_two_runs_with_the_same_seed_agree_within_tolerance(gpu_data):
    # cuDNN picks kernels by timing (benchmark mode) and some backward kernels accumulate with atomics, so two
    # CUDA runs are not bit-identical; they must agree to 1% in loss and 2 points in accuracy. (CPU runs are
    # bit-identical: tests/test_engine.py.)
    a = engine.fit(_cfg(gpu_data, seed=7))
    b = engine.fit(_cfg(gpu_data, seed=7))
    assert len(a.history) == len(b.history) == 2  # zip would pass two empty histories
    for x, y in zip(a.history, b.history):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=0.01)
        assert abs(x["val_acc"] - y["val_acc"]) <= 0.02


@pytest.mark.e2e
@gpu
@needs_cuda
@pytest.mark.parametrize("visible", [False, True], ids=["all-visible", "cuda-visible-devices-set"])
def test_device_attribute_names_the_physical_card(gpu_data, tmp_path, visible):
    """`--devices N` is the N-th visible GPU: with every GPU visible, the last one by its index; under
    CUDA_VISIBLE_DEVICES=LAST, index 0, which the worker must be given as GPU LAST (search/devices.py)."""
    last = torch.cuda.device_count() - 1  # the worker sees it as cuda:0 through CUDA_VISIBLE_DEVICES
    spec = tmp_path / "dev.yaml"
    spec.write_text(f"name: dev\ndataset: pathmnist\ndata_dir: {gpu_data}\nepochs: 1\ntrials: 1\n"
                    "sampler: {name: random, seed: 0}\npruner: {name: none}\nfixed:\n  batch_size: 256\n")
    db = tmp_path / "dev.db"
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])]
                                        + [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(
                                            os.pathsep) if p])
    if visible:
        env["CUDA_VISIBLE_DEVICES"] = str(last)
    proc = subprocess.run(search_cmd() + ["start", "--study", str(spec), "--workers", "1",
                                          "--devices", "0" if visible else str(last),
                                          "--storage", f"sqlite:///{db}"],
                          cwd=tmp_path, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trial = optuna.load_study(study_name="dev", storage=f"sqlite:///{db}").trials[0]
    name = torch.cuda.get_device_name(last)
    assert trial.user_attrs["device"].startswith(f"cuda:0 = GPU {last} ({name}"), trial.user_attrs["device"]


# --- graphs: on (search/train/graphs.py; the CPU half of it: tests/test_graphs.py) ---------------------------------


@gpu
@needs_cuda
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graphed_training_matches_eager_within_tolerance(gpu_data, seed, caplog):
    """The captured step trains what the eager one does: the same loss curve within the tolerance of two eager runs
    (test above) and the same validation accuracy within seed noise; the capture really happened (no fallback)."""
    with caplog.at_level("WARNING", logger="search"):
        graphed = engine.fit(_cfg(gpu_data, seed=seed, graphs="on", augmentation="dihedral+crop", dropout=0.3))
    assert graphed.trainer.graphed, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if "graphs" in r.getMessage()]
    eager = engine.fit(_cfg(gpu_data, seed=seed, graphs="off", augmentation="dihedral+crop", dropout=0.3))
    assert not eager.trainer.graphed
    assert len(graphed.history) == len(eager.history) == 2
    for g, e in zip(graphed.history, eager.history):
        assert g["lr"] == e["lr"]
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=0.02)
        assert abs(g["val_acc"] - e["val_acc"]) <= 0.03
    assert graphed.best["val_acc"] > 0.3  # chance is 0.11


@gpu
@needs_cuda
def test_graphed_evaluation_equals_eager_and_schedules_run_in_the_graph(gpu_data):
    cfg = _cfg(gpu_data, graphs="on", schedule="onecycle", optimizer="adamw", warmup_epochs=0.5, epochs=1)
    r = engine.fit(cfg)
    t = r.trainer
    assert t.graphed and t.scheduler.last_epoch == t.steps_per_epoch
    split = Split(t.data.test.images[:1000], t.data.test.labels[:1000])  # the last batch padded: 1000 of 1024
    assert len(split) % engine.eval_batch(cfg) != 0
    graphed, graphed_scores = t.evaluate_with_scores(split)
    t._eval_graph = None  # the eager pass, on the same weights
    eager, eager_scores = t.evaluate_with_scores(split)
    assert len(graphed_scores) == len(eager_scores) == len(split)
    # bf16 at another batch shape may take other cuDNN kernels: close, not bit-equal
    assert torch.allclose(graphed_scores, eager_scores, atol=1e-2)
    assert graphed["acc"] == pytest.approx(eager["acc"], abs=0.01)


@gpu
@needs_cuda
def test_a_graphed_run_resumes_from_its_checkpoint(gpu_data, tmp_path):
    from search.train.checkpoint import load as load_checkpoint

    cfg = _cfg(gpu_data, graphs="on", epochs=2)
    whole = engine.fit(cfg)
    stopped = engine.fit(cfg, checkpoint=tmp_path / "ck.pt", on_epoch=lambda epoch, m: epoch == 1)
    assert stopped.outcome == "stopped" and stopped.trainer.graphed
    resumed = engine.fit(cfg, resume=load_checkpoint(tmp_path / "ck.pt", cfg.to_dict()))
    assert resumed.trainer.graphed and len(resumed.history) == len(whole.history) == 2
    assert resumed.history[1]["train_loss"] == pytest.approx(whole.history[1]["train_loss"], rel=0.02)
    assert resumed.history[1]["lr"] == whole.history[1]["lr"]
