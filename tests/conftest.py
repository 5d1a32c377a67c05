import os

# Tests never reach a model hub: everything they load is built in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# Trajectory banks built by tests stay out of the user's cache; one per test session,
# removed when it ends.
if "ADVUNLEARN_BANK_DIR" not in os.environ:
    os.environ["ADVUNLEARN_BANK_DIR"] = tempfile.mkdtemp(prefix="advunlearn-bank-")
    atexit.register(shutil.rmtree, os.environ["ADVUNLEARN_BANK_DIR"], ignore_errors=True)
import torch  # noqa: E402

# Triton runs on a CPU only through its interpreter, which must be chosen before
# triton is first imported by anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tiny models: a thread pool only adds synchronisation, which on a loaded CI machine with few
# cores costs far more than the work (benchmarks/README.md).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """The tiny model saved as an SD v1.4-style diffusers folder (shared, read-only)."""
    from helpers import save_sd_folder

    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    save_sd_folder(folder)
    return folder


@pytest.fixture(scope="session")
def other_sd_folder(tmp_path_factory):
    """Another tiny SD folder, of other weights (seed 1: UNet, VAE and text encoder); the weights
    of the single-file checkpoints tests build (shared, read-only)."""
    from helpers import save_sd_folder

    folder = tmp_path_factory.mktemp("other-sd") / "tiny-sd"
    save_sd_folder(folder, seed=1)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (a hub download) fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
