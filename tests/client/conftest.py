"""Harness for the client suite: the real decompd (started as
tests/integration/conftest.py does: ephemeral loopback port, temporary data
dir), decompctl, the Python client, and small helpers (models, a proxy that
cuts or rewrites connections, a tiny tmpfs for ENOSPC)."""
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

SOURCE_DIR = os.environ.get(
    "DECOMPD_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
DECOMPCTL = os.environ.get("DECOMPCTL", "")

_spec = importlib.util.spec_from_file_location(
    "decompd_integration_harness",
    os.path.join(SOURCE_DIR, "tests", "integration", "conftest.py"))
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
Daemon = _harness.Daemon
calibration_bytes = _harness.calibration_bytes
latency_profile = _harness.latency_profile

# The daemon's workers and the in-process engine use the same BLAS thread
# count (see test_identity.py): one each.
DAEMON_ARGS = ("--workers", "1", "--blas-threads", "1")


@pytest.fixture
def daemon_factory(tmp_path):
    made = []

    def make(args=DAEMON_ARGS, env=None, name="var"):
        d = Daemon(tmp_path / name, args, env)
        made.append(d)
        return d
    yield make
    for d in made:
        if d.proc is not None:
            d.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory().start()


def url_of(daemon):
    return "http://127.0.0.1:%d" % daemon.port


def ctl(*args, env=None, cwd=None, timeout=300):
    """Run decompctl; the CompletedProcess (text)."""
    assert DECOMPCTL and os.path.exists(DECOMPCTL), "DECOMPCTL not set"
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([DECOMPCTL] + [str(a) for a in args],
                          capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def client_env(daemon, cache, **extra):
    e = {"DECOMPD_URL": url_of(daemon) if daemon else "http://127.0.0.1:1",
         "DECOMPD_CACHE": str(cache)}
    e.update({k: str(v) for k, v in extra.items()})
    return e


class SmallNet:
    """A small CNN (convs worth decomposing, BN, a Linear) and its files."""

    @staticmethod
    def make(seed=0):
        import torch
        import torch.nn as nn
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    @staticmethod
    def write(folder, seed=0):
        """(weights path, spec path) of a fresh SmallNet."""
        import torch
        from decompd.spec import layer_spec, walk
        m = SmallNet.make(seed)
        w = os.path.join(str(folder), "weights.pth")
        s = os.path.join(str(folder), "spec.json")
        torch.save(m.state_dict(), w)
        with open(s, "w") as f:
            json.dump(layer_spec(walk(m)), f)
        return w, s


def run_job(daemon, tmp_path, policy="budget"):
    """Upload SmallNet and run a job with decompctl; the job id."""
    w, s = SmallNet.write(tmp_path)
    env = client_env(daemon, tmp_path / "cache-submit")
    r = ctl("submit", w, "--spec", s, "--policy", policy, env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    r = ctl("wait", job, "--timeout", "600", env=env)
    assert r.returncode == 0, r.stderr
    return job


def blob_hex(daemon, job, name):
    _, j = daemon.json("GET", "/v1/jobs/" + job, expect=200)
    a = [a for a in j["artifacts"] if a["name"] == name][0]
    return a["digest"][7:], a["size"]


def daemon_blob_file(daemon, hexd):
    for root, _, files in os.walk(daemon.data_dir):
        if hexd in files:
            return os.path.join(root, hexd)
    raise AssertionError("blob %s not in %s" % (hexd, daemon.data_dir))


class Proxy:
    """A TCP proxy in front of the daemon. cut_after: close the first
    `cuts` connections whose answers reach that many bytes, there;
    strip_range: drop Range/If-Range request headers (the server then
    answers 200). Counts requests that carried a Range header."""

    def __init__(self, port, cut_after=None, cuts=1, strip_range=False):
        self.port = port
        self.cut_after = cut_after
        self.cuts = cuts
        self.strip_range = strip_range
        self.ranges_seen = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopped = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._up, args=(c, u), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c), daemon=True).start()

    def _up(self, c, u):
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                for m in re.finditer(rb"\r\nRange: ([^\r]*)", b, re.I):
                    self.ranges_seen.append(m.group(1).decode())
                if self.strip_range:
                    b = re.sub(rb"\r\n(If-)?Range: [^\r]*", b"", b, flags=re.I)
                u.sendall(b)
        except OSError:
            pass
        finally:
            try:
                u.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _down(self, u, c):
        sent = 0
        cut = self.cut_after
        try:
            while True:
                b = u.recv(65536 if not cut else max(1, min(65536, cut - sent)))
                if not b:
                    break
                c.sendall(b)
                sent += len(b)
                if cut and sent >= cut:
                    with self.lock:
                        if self.cuts > 0:
                            self.cuts -= 1
                            break  # cut the connection mid-answer
                    cut = None
        except OSError:
            pass
        finally:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 32 KiB tmpfs (root in a container can mount one): writes past it
    fail with ENOSPC for real. Skips when mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k,mode=0755",
                        "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (%s): ENOSPC not simulated"
                    % r.stderr.strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


sys.path.insert(0, os.path.dirname(__file__))
