"""How the kernels come: built with the package, built on first use (_jit), or
not at all with a warning that says why. Slow run: a plain ``pip install .``
into a fresh venv, as from PyPI, ends with the kernels active."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iterl2norm import _jit

REPO = Path(__file__).resolve().parents[1]


def test_the_cache_is_keyed_by_source_python_and_torch(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv(_jit.CACHE_ENV, str(tmp_path))
    directory = _jit.cache_dir()
    assert directory.parent == tmp_path
    assert torch.__version__ in directory.name
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in directory.name
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert _jit.cache_dir() != directory


def test_the_build_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(_jit.JIT_ENV, "0")
    assert _jit.load() == (None, "ITERL2NORM_JIT=0")


def test_a_failed_build_warns_and_says_why(monkeypatch, tmp_path):
    # A compiler that does not exist: the build fails at once.
    monkeypatch.setenv(_jit.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="could not be built .* torch paths run instead"):
        module, why = _jit.load()
    assert module is None and "iterl2norm_kernels" in why


def test_the_source_ships_with_the_package():
    assert _jit.SOURCE.is_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'iterl2norm = ["csrc/*.cpp"]' in pyproject


INSTALL = """
set -e
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q -c "$REPO/constraints.txt" torch
"$WORK/venv/bin/python" -m pip install -q -c "$REPO/constraints.txt" "$REPO"
ITERL2NORM_CACHE="$WORK/cache" "$WORK/venv/bin/iterl2norm" info --json > "$WORK/first.json"
ITERL2NORM_CACHE="$WORK/cache" "$WORK/venv/bin/iterl2norm" info --json > "$WORK/second.json"
"""


@pytest.mark.slow
def test_a_plain_pip_install_ends_with_the_kernels_active(tmp_path):
    # From a clean copy of the committed tree (no kernels built in place), with
    # build isolation, as `pip install iterl2norm` installs: about a minute
    # and a half, most of it the first import's build.
    subprocess.run(["git", "clone", "-q", str(REPO), str(tmp_path / "repo")], check=True)
    env = {**os.environ, "REPO": str(tmp_path / "repo"), "WORK": str(tmp_path)}
    done = subprocess.run(
        ["bash", "-c", INSTALL], env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiling the kernels" in done.stderr
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    assert first["kernels"] == second["kernels"] == "jit"
    assert first["isa"] in first["supported_isas"]
