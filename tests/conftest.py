"""Shared test set-up: CI (CI=true) runs the short form of slow checks; on an install without
the [train] extra (no torch) the test modules that need it are skipped, with the reason."""

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ROOT / "archs"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if IN_CI else "dev")


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous in tests."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and lose a lot on a shared 2-core machine.
    Modules that train take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # here, not at the top: the front end's tests run without torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


HAS_TORCH = importlib.util.find_spec("torch") is not None

# The test modules that need the [train] extra (torch, safetensors, scikit-learn's digits).
# The others test the front end, which must work without it.
NEEDS_TRAIN = {
    "test_compiler_cli.py", "test_compiler_cost.py", "test_compiler_export.py", "test_compiler_ops.py",
    "test_compiler_supernet.py", "test_data.py", "test_eval_bench_export.py", "test_retrain.py", "test_rundir.py",
    "test_search.py", "test_supernet_train.py",
}


class _NeedsTrain(pytest.Module):
    def collect(self):
        pytest.skip("needs the [train] extra (torch is not installed): pip install 'hyctas[train]'")


def pytest_pycollect_makemodule(module_path, parent):
    if not HAS_TORCH and module_path.name in NEEDS_TRAIN:
        return _NeedsTrain.from_parent(parent, path=module_path)
    return None
