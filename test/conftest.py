"""Shared test set-up: keep torch to one thread (2-core CI shared by node processes) and give each test
session its own DDS domain so parallel runs on one machine never see each other."""
import os
import random

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the codec tests run without torch
    pass


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# test helpers (node_processes.py) and the wire-test nodes' payload module import by plain name
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "wire_nodes"))


@pytest.fixture(scope="session")
def quick_cache(tmp_path_factory):
    """Quick (tiny) models trained once per test session into a private cache."""
    from eclm_ros.training.trainer import train_all

    cache = tmp_path_factory.mktemp("eclm_cache")
    train_all(quick=True, cache_dir=cache, progress=False)
    return cache


@pytest.fixture
def quick_model(quick_cache):
    """A fresh copy of a quick checkpoint: ``quick_model("cloud")`` (also "edge", "edge_small")."""
    from eclm_ros.core import checkpoint

    return lambda name: checkpoint.load(checkpoint.default_path(name, True, quick_cache))


@pytest.fixture(scope="session")
def to_tensor():
    """Fashion-MNIST views -> model input (the default models' preprocessing)."""
    from eclm_ros.core.preprocess import Preprocessor
    from eclm_ros.sim.data import fashion_mnist_description

    return Preprocessor(fashion_mnist_description()).tensor


@pytest.fixture(scope="session")
def user_models(tmp_path_factory):
    """A robot integrator's own model files (test/user_models.py), built once per test session."""
    from user_models import build

    return build(tmp_path_factory.mktemp("user_models"))


def pytest_sessionstart(session):
    from eclm_ros.ros.launcher import clean_shared_memory

    clean_shared_memory()  # the fault tests SIGKILL nodes, whose Fast DDS segments outlive them


def pytest_sessionfinish(session, exitstatus):
    from eclm_ros.ros.launcher import clean_shared_memory

    clean_shared_memory()
