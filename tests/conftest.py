"""Shared fixtures: an isolated data home, no network, and a tiny trained organism."""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """Point TRIPHASE_HOME at a session folder: tests never touch the user's cache."""
    home = tmp_path_factory.mktemp("triphase_home")
    previous = os.environ.get("TRIPHASE_HOME")
    os.environ["TRIPHASE_HOME"] = str(home)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    yield home
    if previous is None:
        os.environ.pop("TRIPHASE_HOME", None)
    else:
        os.environ["TRIPHASE_HOME"] = previous


def _is_local(address) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that tries to reach a non-loopback address (as nilearn's tests do)."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if not _is_local(address):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(scope="session")
def tiny_organism(session_home):
    """The tiny organism, trained once per session in the session home (a CheckpointSeries)."""
    from triphase.models.organism import train_organism
    from triphase.models.series import get_series

    train_organism("tiny", progress=False)
    return get_series("organism-tiny")


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """A data home of its own for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("TRIPHASE_HOME", str(home))
    return home


@pytest.fixture
def weight_reads(monkeypatch):
    """The sources ``AutoModelForCausalLM.from_pretrained`` read, in order (the real loader still runs)."""
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained
    reads = []

    def counting(source, *args, **kwargs):
        reads.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting)
    return reads
