"""Real data: simple_cnn_v2 trained by the engine on the real MNIST test set split 8,000 / 2,000 (slow, ~1 min)."""
import sys
from pathlib import Path

import pytest

from search.train import engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import real_mnist  # noqa: E402


@pytest.mark.slow
def test_simple_cnn_v2_reaches_98_5_percent_on_real_mnist(tmp_path):
    if not (real_mnist.SHARED / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST test set is not at {real_mnist.SHARED}")
    data_dir = real_mnist.split_real_mnist(real_mnist.SHARED, tmp_path)
    cfg = real_mnist.config(data_dir, epochs=10).replace(device="cpu")
    m = engine.train(cfg, tmp_path / "run", progress=False)
    assert m["test_acc"] >= 0.985, m
    assert (tmp_path / "run" / "model.pt").exists()
