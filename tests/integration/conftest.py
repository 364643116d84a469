"""Shared harness for decompd's integration tests.

Each test starts the real daemon binary (DECOMPD_BIN) on an ephemeral
loopback port (--listen 127.0.0.1:0; the bound port is read from the
`event=listening` log line) with a temporary data dir, and talks to it with
http.client only.
"""
import http.client
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import time

import pytest

BIN = os.environ.get("DECOMPD_BIN", "")
# A PostgreSQL server (postgresql://USER@HOST:PORT, as pg_server.py gives
# it; suite 'integration-pg'): every daemon the harness starts then keeps
# its index and queue there, in a database of its own per data dir.
TEST_INDEX = os.environ.get("DECOMPD_TEST_INDEX", "")


# An S3-compatible server (pg_server.py --s3): every
# daemon then keeps its blobs there, under a prefix of its data dir's.
TEST_BLOBS = os.environ.get("DECOMPD_TEST_BLOBS", "")


def blobs_for(data_dir):
    """The environment giving a daemon on `data_dir` its blobs in the test
    S3 server, under a prefix of its own (nodes on one data dir share it)."""
    import hashlib
    key, secret = os.environ["DECOMPD_TEST_S3_KEYS"].split(":", 1)
    prefix = hashlib.sha256(os.path.abspath(str(data_dir)).encode()).hexdigest()[:20]
    return {"DECOMPD_BLOBS": TEST_BLOBS + "/" + prefix,
            "DECOMPD_S3_ENDPOINT": os.environ["DECOMPD_TEST_S3_ENDPOINT"],
            "DECOMPD_S3_ACCESS_KEY_ID": key,
            "DECOMPD_S3_SECRET_ACCESS_KEY": secret}


def pg_only_skip(reason):
    """Skip marker for a test that inspects the embedded SQLite store itself
    (its file, its reserve): it has no meaning on PostgreSQL."""
    return pytest.mark.skipif(bool(TEST_INDEX), reason="PostgreSQL index: " + reason)


def index_for(data_dir):
    """The `index` setting for a daemon on `data_dir` ("" for the default):
    under DECOMPD_TEST_INDEX, a database of its own on that server, made
    on first use and kept across restarts on the same data dir."""
    if not TEST_INDEX:
        return ""
    import hashlib
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # (loaded by path from tests/client too)
        sys.path.insert(0, here)
    import pg_server
    name = "d_" + hashlib.sha256(os.path.abspath(str(data_dir)).encode()).hexdigest()[:20]
    pg_server.create_database(TEST_INDEX, name)
    return TEST_INDEX.rstrip("/") + "/" + name
SOURCE_DIR = os.environ.get(
    "DECOMPD_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def _sql_literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def index_sql(daemon, sql, params=()):
    """Run `sql` (`?` placeholders) on the daemon's index, whichever it is:
    the embedded SQLite file, or its database on the PostgreSQL server. The
    rows, as tuples (numbers as int)."""
    if not TEST_INDEX:
        import sqlite3
        db = sqlite3.connect(os.path.join(daemon.data_dir, "decompd.db"))
        try:
            rows = db.execute(sql, params).fetchall()
            db.commit()
            return rows
        finally:
            db.close()
    parts = sql.split("?")
    assert len(parts) == len(params) + 1, sql
    text = parts[0] + "".join(_sql_literal(p) + rest for p, rest in zip(params, parts[1:]))
    r = subprocess.run(["psql", daemon.env["DECOMPD_INDEX"], "-X", "-q", "-At",
                        "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", text],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [tuple(int(c) if c.lstrip("-").isdigit() else c for c in line.split("\t"))
            for line in r.stdout.splitlines()]


class Daemon:
    """One decompd process over a data dir; restartable."""

    def __init__(self, data_dir, args=(), env=None, rlimit_data=None):
        self.data_dir = str(data_dir)
        self.args = list(args)
        # RLIMIT_DATA for the process (bytes), as `prlimit --data` sets it
        self.rlimit_data = rlimit_data
        self.env = dict(os.environ)
        if TEST_INDEX:
            self.env["DECOMPD_INDEX"] = index_for(self.data_dir)
        if TEST_BLOBS:
            self.env.update(blobs_for(self.data_dir))
        self.env.update(env or {})
        self.log_path = os.path.join(os.path.dirname(self.data_dir),
                                     os.path.basename(self.data_dir) + ".log")
        self.proc = None
        self.port = None

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout=300):
        assert BIN and os.path.exists(BIN), "DECOMPD_BIN not set"
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        log = open(self.log_path, "ab")
        limit = self.rlimit_data
        self.proc = subprocess.Popen(
            [BIN, "--data-dir", self.data_dir, "--listen", "127.0.0.1:0"] + self.args,
            stdout=subprocess.DEVNULL, stderr=log, env=self.env,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_DATA,
                                                   (limit, limit)))
            if limit else None)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                m = re.search(rb"event=listening addr=127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("decompd exited %s:\n%s" % (self.proc.returncode, self.log()))
            time.sleep(0.05)
        raise RuntimeError("decompd did not start:\n" + self.log())

    def stop(self, sig=signal.SIGTERM, timeout=300):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        return rc

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def tmp_dir(self):
        """The daemon's temp folder: DATA_DIR/tmp, or on a PostgreSQL index
        (several nodes sharing DATA_DIR) its node's DATA_DIR/tmp/NODE."""
        tmp = os.path.join(self.data_dir, "tmp")
        if not TEST_INDEX:
            return tmp
        node = self.env.get("DECOMPD_NODE_ID") or re.sub(
            r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64]
        return os.path.join(tmp, node)

    def log(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def run_cli(self, *args, check=True):
        """Run `decompd ARGS --data-dir DIR` (admin verbs)."""
        r = subprocess.run([BIN] + list(args) + ["--data-dir", self.data_dir],
                           capture_output=True, text=True, env=self.env, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError("decompd %s: %s" % (" ".join(args), r.stderr))
        return r

    # -- HTTP -------------------------------------------------------------
    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, token=None, timeout=120):
        """(status, headers dict with lower-case names, body bytes)."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def json(self, method, path, body=None, token=None, expect=None, headers=None):
        status, hdrs, data = self.request(method, path, body, token=token, headers=headers)
        doc = json.loads(data) if data else None
        if expect is not None:
            assert status == expect, "%s %s: %d %s" % (method, path, status, data[:500])
        return status, doc

    def upload(self, data, name="", token=None):
        path = "/v1/models" + ("?name=" + name if name else "")
        return self.json("POST", path, body=data, token=token,
                         headers={"Content-Type": "application/octet-stream"})

    def declare_upload(self, length, token=None):
        """POST /v1/models declaring `length` bytes but sending none: a body
        over the limit must be refused on the headers alone. (status, body)"""
        c = self.conn(30)
        try:
            c.putrequest("POST", "/v1/models")
            c.putheader("Content-Type", "application/octet-stream")
            c.putheader("Content-Length", str(length))
            if token:
                c.putheader("Authorization", "Bearer " + token)
            c.endheaders()
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_job(self, job_id, states=("succeeded", "failed", "cancelled"), timeout=300,
                 token=None):
        deadline = time.monotonic() + timeout
        j = None
        while time.monotonic() < deadline:
            _, j = self.json("GET", "/v1/jobs/" + job_id, token=token, expect=200)
            if j["state"] in states:
                return j
            time.sleep(0.1)
        raise AssertionError("job %s still %s:\n%s" % (job_id, j and j["state"], self.log()[-4000:]))

    def events(self, job_id, timeout=600):
        """GET /v1/jobs/{id}/events to its end: (content type,
        [(event, data)])."""
        c = self.conn(timeout)
        try:
            c.request("GET", "/v1/jobs/%s/events" % job_id)
            r = c.getresponse()
            assert r.status == 200, r.read()
            events, name, data = [], None, []
            while True:
                line = r.readline()
                if not line:  # the server ended the stream
                    break
                line = line.decode().rstrip("\n")
                if line == "":
                    if name:
                        events.append((name, json.loads("\n".join(data))))
                    name, data = None, []
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            return r.getheader("content-type"), events
        finally:
            c.close()

def assert_problem(status, hdrs, body, want_status, want_code):
    assert status == want_status, (status, body[:400])
    assert hdrs.get("content-type", "").startswith("application/problem+json"), hdrs
    doc = json.loads(body)
    for k in ("type", "title", "status", "detail", "code"):
        assert k in doc, (k, doc)
    assert doc["status"] == want_status and doc["code"] == want_code, doc
    return doc


def resnet18_upload(daemon):
    """torchvision's resnet18 (seed 0) uploaded to `daemon` as a .pth: the
    module and the model's answer."""
    import io
    import torch
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    status, m = daemon.upload(buf.getvalue(), name="resnet18")
    assert status == 201, m
    return model, m


def conv_spec(model):
    """The layer spec of a live module (what the Python package makes)."""
    import torch
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            layers.append({
                "name": name, "type": "Conv2d",
                "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                "dilation": list(m.dilation), "groups": m.groups,
                "bias": m.bias is not None, "padding_mode": m.padding_mode})
    return {"layers": layers}


def calibration_bytes(grams, layers=None, meta=None, dtype="<f8"):
    """A decompd.calibration safetensors file, written here (JSON header +
    numpy bytes, as README.md gives it under decompctl decompose
    --calibration): {key: gram} (a 2-D Gram for a Linear, [groups, n, n]
    for a conv), each with its count; `layers` (the metadata's layer map)
    and `meta` (the whole metadata) replace the ones made from `grams`."""
    import numpy as np
    layers = layers or {k: {"gram": k, "type": "Linear" if g.ndim == 2
                            else "Conv2d", "shape": list(g.shape)}
                        for k, g in grams.items()}
    tensors = {}
    for k, g in grams.items():
        tensors[k + ".gram"] = np.ascontiguousarray(g, dtype)
        tensors[k + ".count"] = np.array(1000, "<i8")
    header = {"__metadata__": meta or {"format": "decompd.calibration",
                                       "version": "1",
                                       "layers": json.dumps(layers)}}
    blobs, off = [], 0
    for k, a in tensors.items():
        b = a.tobytes()
        header[k] = {"dtype": {"f8": "F64", "f4": "F32", "i8": "I64"}[a.dtype.str[1:]],
                     "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def latency_profile(spec, slow=(), device="test cpu"):
    """A decompd.profile document for the Conv2d (groups 1) and Linear
    layers of `spec`, made here from their shapes: each layer takes 10 ms
    and every candidate is faster at low rank (channel_svd / svd at ranks
    1, max/2, max: 1, 4, 12 ms; spatial_svd vertical-first at 1, max/2,
    max: 2, 6, 14 ms); a layer named in `slow` takes 1 ms and every
    candidate is slower than that (2, 5, 9 and 3, 10, 20 ms)."""
    layers = {}
    for l in spec["layers"]:
        if l["type"] == "Linear":
            shape = [l["out_features"], l["in_features"]]
            cands = [("svd", None, min(shape))]
        else:
            kh, kw = l["kernel_size"]
            i, o = l["in_channels"], l["out_channels"]
            shape = [o, i, kh, kw]
            cands = [("channel_svd", None, min(o, i * kh * kw))]
            if kh > 1 and kw > 1:
                cands.append(("spatial_svd", "vertical_first", min(i * kh, o * kw)))
        is_slow = l["name"] in slow
        entry = {"type": l["type"], "weight_shape": shape,
                 "time": 0.001 if is_slow else 0.010, "candidates": []}
        for method, order, top in cands:
            spatial = method == "spatial_svd"
            times = ([0.003, 0.01, 0.02] if spatial else [0.002, 0.005, 0.009]) \
                if is_slow else \
                ([0.002, 0.006, 0.014] if spatial else [0.001, 0.004, 0.012])
            c = {"method": method, "ranks": [1, max(2, top // 2), top],
                 "times": times}
            if order:
                c["order"] = order
            entry["candidates"].append(c)
        layers[l["name"]] = entry
    return {"format": "decompd.profile", "version": 1, "device_name": device,
            "torch_version": "2.x", "dtype": "float32",
            "input_shape": [8, 16, 32, 32], "layers": layers}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def daemon_factory(tmp_path):
    made = []

    def make(args=(), env=None, name="var"):
        d = Daemon(tmp_path / name, args, env)
        made.append(d)
        return d
    yield make
    for d in made:
        if d.proc is not None:
            d.stop(signal.SIGKILL)


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory().start()
