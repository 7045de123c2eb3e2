"""The package as a user outside this repository gets it: a wheel installed into a fresh virtual environment.

The wheel is built from the checkout (``pip wheel --no-deps``) and installed
with ``--no-deps`` into a new virtual environment in a temporary folder; the
dependencies (torch, transformers, jupyter-book, ...) come from the test
environment through a ``.pth`` line, so nothing is downloaded. That
environment's site-packages does not put this checkout on the path (``.pth``
files inside a folder added by a ``.pth`` line are not processed), so
``triphase`` resolves to the wheel: :func:`installed_wheel` checks it.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO_ROOT


@dataclass
class Installed:
    python: Path
    triphase: Path
    package: Path  # the triphase package folder inside the new environment

    def run(self, *args, cwd, check=True, env=None):
        return subprocess.run([str(self.triphase), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                              check=False, env=env)


def installed_wheel(folder: Path) -> Installed:
    """Build the wheel and install it into ``folder/venv``; return the environment's paths."""
    wheels = folder / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(REPO_ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("triphase-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    located = subprocess.run([str(python), "-c", "import triphase; print(triphase.__file__)"],
                             check=True, capture_output=True, text=True).stdout.strip()
    package = Path(located).parent
    if REPO_ROOT in package.parents or not str(package).startswith(str(venv)):
        raise AssertionError(f"the new environment imports triphase from {package}, not from its wheel")
    return Installed(python, venv / "bin" / "triphase", package)
