"""Shared fixtures: real test data shipped in tests/data, and one tiny real build per session."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
MNIST_8K = DATA / "mnist-8k"
SAMPLES = DATA / "samples"


def _has_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST_8K


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """A real build on 2,000 MNIST training images, 4 + 20 epochs (≈45 s): every stage runs for real."""
    from cbnet_tl.toolchain.build import BuildConfig, build
    from cbnet_tl.toolchain.checks import CheckConfig
    from cbnet_tl.toolchain.train import TrainConfig

    out = tmp_path_factory.mktemp("builds") / "tiny"
    build(
        BuildConfig(
            dataset="mnist", out=out, data_dir=MNIST_8K, allow_download=False, max_train_images=2000,
            train=TrainConfig(blenet_epochs=4, autoencoder_epochs=20, progress=False, min_autoencoder_pairs=0,
                              augment_shift_pixels=0),
            check=CheckConfig(max_accuracy_drop=5.0),
            write_report=True,
        ),
        log=lambda message: None,
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_build) -> Path:
    return tiny_build / "bundle"
