"""Shared fixtures: the synthetic dataset, a trained tiny model, the CIFAR-10 JPEG zip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from advcli.data import ImageData, load_dataset
from advcli.train.loop import TrainOptions, fit

REPO = Path(__file__).resolve().parents[1]
CIFAR_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"
MODEL_INFO = REPO.parent / "shared" / "published" / "robustbench" / "model_info"


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: the suite's models are tiny, and tests start subprocesses (torchrun
    # ranks, DataLoader workers) that would otherwise oversubscribe 2 cores, where OpenMP's
    # spin-waiting makes small ops tens of times slower (measured here under load).
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ADVCLI_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def synthetic_data() -> ImageData:
    return load_dataset("synthetic", seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, synthetic_data: ImageData) -> Path:
    """A tiny-cnn trained (clean) on synthetic: high clean accuracy, not robust."""
    out = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    fit(
        TrainOptions(arch="tiny-cnn", epochs=4, batch_size=128, lr=0.1, augment="none", out=str(out)),
        synthetic_data,
        torch.device("cpu"),
    )
    return out


def _shared(path: Path) -> Path:
    """A file or folder of the shared data; skipped on a laptop without it, a failure in CI."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {path} is missing")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    """The shared CIFAR-10 JPEG zip."""
    return _shared(CIFAR_ZIP)


@pytest.fixture(scope="session")
def shared_model_info() -> Path:
    """The shared copy of robustbench's model_info/ (the leaderboard entries), unchanged."""
    return _shared(MODEL_INFO)
