"""The package installs offline with pip from python/ (pyproject.toml,
setuptools backend, no dependency beyond torch) and works from the installed
copy, outside the source tree, finding the engine through DECOMPD_LIBRARY.

Build isolation would download setuptools, so offline installs need
--no-build-isolation; the copy is built outside the source tree so nothing
is written there."""

import os
import shutil
import subprocess
import sys

import pytest

from tensor_decompose_common import SOURCE_DIR


def have(module):
    return subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not (have("pip") and have("setuptools")),
                    reason="pip or setuptools not installed")
def test_pip_install_offline_and_use(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(SOURCE_DIR, "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                  "__pycache__"))
    target = tmp_path / "site"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation",
         "--no-deps", "--no-index", "--target", str(target), str(src)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "decompd" / "tensor_decompose.py").exists()

    env["PYTHONPATH"] = str(target)
    code = """
import decompd, torch.nn as nn
from decompd.tensor_decompose import auto_decomposition
net, changes = auto_decomposition(nn.Sequential(nn.Conv2d(16, 16, 3)))
print(decompd.__file__, changes)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(target))
    assert "{'0': ['0.0', '0.1']}" in proc.stdout
