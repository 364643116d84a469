"""Jobs with many artifacts — a sharded output: model.safetensors.index.json
and one file per shard, beside decompose_info.json — fetched by decompctl
and decompd.client. The daemon does not list sharded artifacts yet (that is
coming on the server side), so these tests serve them from a stand-in: a
small HTTP server speaking the two routes a fetch uses, GET /v1/jobs/{id}
and GET /v1/jobs/{id}/artifacts/{name} with ETag, Range and If-Range as
api/openapi.yaml describes them, which also counts the artifact answers in
flight. The artifacts are the engine's own sharded output (decompctl
decompose --shard-bytes). What they prove: at most N transfers at once and
more than one, every file verified, more artifacts than the fixed array of
decomp_client_fetch, nothing in DEST when any artifact fails, the index
copied last, and Client.pull of a sharded job equal to the .pth output."""
import hashlib
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import DECOMPCTL, SmallNet, ctl

INDEX = "model.safetensors.index.json"
JOB = "j_0123456789abcdef"
PIECE = 2048  # the shards are small: pace them in small pieces


class StandIn:
    """A job's artifacts served over loopback. `pace`: seconds slept between
    PIECE-byte pieces of an artifact answer; `corrupt`: names whose bytes are
    served with one byte flipped."""

    def __init__(self, files, pace=0.0, corrupt=(), piece=PIECE):
        self.files = files  # name -> bytes, in the job's order
        self.pace, self.corrupt, self.piece = pace, set(corrupt), piece
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.requests = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                stand_in.serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def job(self):
        arts = [{"name": n, "size": len(b),
                 "digest": "sha256:" + hashlib.sha256(b).hexdigest(),
                 "media_type": "application/octet-stream",
                 "url": "/v1/jobs/%s/artifacts/%s" % (JOB, n)}
                for n, b in self.files.items()]
        return {"id": JOB, "model": "m_0123456789abcdef",
                "state": "succeeded", "attempts": 1,
                "progress": {"layers_done": 1, "layers_total": 1},
                "artifacts": arts}

    def send(self, h, status, body, headers=()):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        return body

    def serve(self, h):
        path = urllib.parse.unquote(h.path)
        if path == "/v1/jobs/" + JOB:
            body = json.dumps(self.job()).encode()
            h.wfile.write(self.send(h, 200, body,
                                    [("Content-Type", "application/json")]))
            return
        m = re.fullmatch(r"/v1/jobs/%s/artifacts/(.+)" % JOB, path)
        if not m or m.group(1) not in self.files:
            h.wfile.write(self.send(h, 404, b'{"code": "not_found"}'))
            return
        name = m.group(1)
        data = self.files[name]
        etag = '"sha256:%s"' % hashlib.sha256(data).hexdigest()
        if name in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status = 0, 200
        rng = h.headers.get("Range")
        self.requests.append((name, rng))
        if rng and h.headers.get("If-Range", etag) == etag:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            status = 206
        headers = [("ETag", etag), ("Accept-Ranges", "bytes")]
        if status == 206:
            headers.append(("Content-Range", "bytes %d-%d/%d" % (
                start, len(data) - 1, len(data))))
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        counted = True
        try:
            body = self.send(h, status, data[start:], headers)
            for i in range(0, len(body), self.piece):
                if i + self.piece >= len(body):
                    # Out of flight before the last piece: a client that
                    # asks for the next file once it has this one never
                    # finds two in flight.
                    with self.lock:
                        self.in_flight -= 1
                    counted = False
                elif self.pace:
                    time.sleep(self.pace)
                h.wfile.write(body[i:i + self.piece])
        finally:
            if counted:
                with self.lock:
                    self.in_flight -= 1


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The engine's sharded and .pth outputs of one SmallNet, and its
    layer spec and weights."""
    tmp = tmp_path_factory.mktemp("engine")
    w, s = SmallNet.write(tmp)
    outs = {}
    for fmt, extra in (("safetensors", ["--shard-bytes", "2K"]),
                       ("pth", [])):
        outs[fmt] = tmp / fmt
        p = subprocess.run([DECOMPCTL, "decompose", "--weights", w, "--spec",
                            s, "--out", str(outs[fmt]), "--format", fmt,
                            "--quiet", *extra], capture_output=True,
                           text=True, timeout=600,
                           env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        assert p.returncode == 0, p.stderr
    names = sorted(os.listdir(outs["safetensors"]))
    files = {n: (outs["safetensors"] / n).read_bytes() for n in names}
    assert sum(n.endswith(".safetensors") for n in files) >= 8, names
    return files, outs


def env_for(server, cache):
    return {"DECOMPD_URL": server.url, "DECOMPD_CACHE": str(cache)}


def test_many_artifacts_are_fetched_at_most_n_at_a_time(outputs, tmp_path):
    from decompd.client import Client
    files, _ = outputs
    assert len(files) > 8  # more than decomp_client_fetch's fixed array
    for n in (1, 3):
        server = StandIn(files, pace=0.02)
        try:
            r = ctl("fetch", JOB, "--parallel", n, "--json", "--out",
                    tmp_path / ("out%d" % n),
                    env=env_for(server, tmp_path / ("c%d" % n)))
            assert r.returncode == 0, r.stderr
            assert server.max_in_flight == n, server.max_in_flight
            got = json.loads(r.stdout)["files"]
            assert [f["name"] for f in got] == list(files)
            for f in got:
                assert open(f["path"], "rb").read() == files[f["name"]]
                assert f["digest"] == "sha256:" + hashlib.sha256(
                    files[f["name"]]).hexdigest()
            # The index was copied after every shard.
            out = tmp_path / ("out%d" % n)
            t_index = os.stat(out / INDEX).st_mtime_ns
            assert all(os.stat(out / k).st_mtime_ns <= t_index
                       for k in files), "index copied before a shard"
        finally:
            server.close()
        server = StandIn(files, pace=0.02)
        try:
            paths = Client(server.url, cache=str(tmp_path / ("p%d" % n))) \
                .fetch(JOB, parallel=n)
            assert server.max_in_flight == n, server.max_in_flight
        finally:
            server.close()
        assert {k: open(p, "rb").read() for k, p in paths.items()} == files


def test_one_bad_shard_leaves_dest_without_any_file(outputs, tmp_path):
    from decompd.client import Client, DigestMismatchError
    files, _ = outputs
    bad = sorted(n for n in files if n.endswith(".safetensors"))[4]
    server = StandIn(files, corrupt=[bad])
    try:
        r = ctl("fetch", JOB, "--parallel", "4", "--out", tmp_path / "out",
                env=env_for(server, tmp_path / "c"))
        assert r.returncode == 10 and bad in r.stderr, r.stderr
        with pytest.raises(DigestMismatchError, match=bad):
            Client(server.url, cache=str(tmp_path / "p")).fetch(
                JOB, dest=tmp_path / "pyout", parallel=4)
    finally:
        server.close()
    # Nothing copied, so no index that would make the folder look whole;
    # no partial left for the refused shard.
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    assert not (tmp_path / "pyout").exists() or \
        not os.listdir(tmp_path / "pyout")
    for c in ("c", "p"):
        assert not os.listdir(tmp_path / c / "tmp")
    # Served right, the next fetch takes only what is missing: the bad one
    # and any not started after it failed.
    from decompd.client import blob_path
    missing = [n for n, b in files.items() if not os.path.exists(blob_path(
        str(tmp_path / "c"), hashlib.sha256(b).hexdigest()))]
    assert bad in missing
    server = StandIn(files)
    try:
        r = ctl("fetch", JOB, "--json", "--out", tmp_path / "out",
                env=env_for(server, tmp_path / "c"))
        assert r.returncode == 0, r.stderr
        fetched = [n for n, _ in server.requests]
    finally:
        server.close()
    assert sorted(fetched) == sorted(missing), (fetched, missing)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(files)


def test_pull_of_a_sharded_job_gives_the_pth_outputs_model(outputs, tmp_path):
    import torch
    from decompd.client import Client
    from decompd.tensor_decompose import decompose_network
    files, outs = outputs
    ref, ref_changes = decompose_network(
        SmallNet.make(seed=4), str(outs["pth"] / "decompose_info.json"))
    ref.load_state_dict(torch.load(outs["pth"] / "decomposed_weights.pth",
                                   weights_only=True))
    server = StandIn(files, pace=0.005)
    try:
        model, changes = Client(server.url, cache=str(tmp_path / "c")).pull(
            SmallNet.make(seed=3), JOB, parallel=4)
        assert server.max_in_flight > 1
    finally:
        server.close()
    assert changes == ref_changes and changes
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def fetch_api(server, cache, mode, *extra):
    exe = os.environ.get("DECOMPD_FETCH_API", "")
    assert exe and os.path.exists(exe), "DECOMPD_FETCH_API not set"
    p = subprocess.run([exe, server.url, str(cache), JOB, mode,
                        *map(str, extra)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_c_api_fixed_array_refuses_a_larger_job_and_fetch_with_takes_all(
        outputs, tmp_path):
    files, _ = outputs
    server = StandIn(files, pace=0.005)
    try:
        # decomp_client_fetch: 10 artifacts do not fit its 8; nothing moved.
        r = fetch_api(server, tmp_path / "c", "fixed")
        assert r["rc"] != 0 and "decomp_client_fetch_with" in r["message"]
        assert r["files"] == [] and server.requests == []
        # decomp_client_fetch_with: all of them, progress on the calling
        # thread only, its last report the whole call's.
        r = fetch_api(server, tmp_path / "c", "with", 3)
        assert r["rc"] == 0, r["message"]
        assert [n for n, _ in r["files"]] == list(files)
        for n, p in r["files"]:
            assert open(p, "rb").read() == files[n]
        assert server.max_in_flight == 3
        assert r["progress_calls"] >= len(files) - 1
        assert not r["other_thread"]
        assert r["files_done"] == r["files_total"] == len(files)
        assert r["all_done"] == r["all_total"] == sum(
            len(b) for b in files.values())
        # Out of range: refused before anything.
        r = fetch_api(server, tmp_path / "c2", "with", 33)
        assert r["rc"] != 0 and "1 to 32" in r["message"], r
    finally:
        server.close()


def test_sigint_stops_every_transfer_and_the_next_fetch_resumes_them(
        outputs, tmp_path):
    """decompctl fetch interrupted (SIGINT) while several artifacts are in
    flight: it stops them all, exits 130 keeping their partial files, and
    the next fetch resumes each with Range and verifies it."""
    import signal
    files, _ = outputs
    # Slow enough that the interrupt lands mid-artifact.
    server = StandIn(files, pace=0.05)
    cache = tmp_path / "c"
    try:
        e = dict(os.environ, **env_for(server, cache))
        p = subprocess.Popen([DECOMPCTL, "fetch", JOB, "--parallel", "3"],
                             env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.in_flight < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # some bytes of each
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130, (p.returncode, err)
        assert "interrupted" in err and "resumes" in err, err
        parts = os.listdir(cache / "tmp")
        assert len(parts) >= 2, parts
        kept = {n.split(".")[0]: os.path.getsize(cache / "tmp" / n)
                for n in parts}
        assert all(k > 0 for k in kept.values()), kept
        assert not (cache / "jobs").exists()
        # Resumed: a Range request from where each partial ends.
        server.requests.clear()
        r = ctl("fetch", JOB, "--json", env=env_for(server, cache))
        assert r.returncode == 0, r.stderr
        ranges = sorted(rng for _, rng in server.requests if rng)
        assert ranges == sorted("bytes=%d-" % k for k in kept.values()), \
            (ranges, kept)
        got = json.loads(r.stdout)["files"]
        resumed = [f for f in got if f["resumed_from"] > 0]
        assert len(resumed) == len(kept)
        for f in got:
            assert open(f["path"], "rb").read() == files[f["name"]]
        assert os.listdir(cache / "tmp") == []
    finally:
        server.close()


def test_python_fetch_interrupted_keeps_partials_and_resumes(tmp_path):
    """Client.fetch interrupted (KeyboardInterrupt, from SIGINT) while
    several artifacts are in flight: every transfer stops, their partial
    files are kept, and the next fetch resumes each with Range."""
    import signal
    import sys
    from decompd.client import Client
    # Artifacts of 2 MiB (the client reads 256 KiB at a time and stops
    # between reads), served at 1.3 MB/s each.
    files = {"part-%d.bin" % i: os.urandom(2 << 20) for i in range(4)}
    server = StandIn(files, pace=0.05, piece=65536)
    cache = tmp_path / "c"
    script = ("import sys\nfrom decompd.client import Client\n"
              "try:\n"
              "    Client(sys.argv[1], cache=sys.argv[2]).fetch(sys.argv[3], "
              "parallel=3)\n"
              "except KeyboardInterrupt:\n"
              "    sys.exit(130)\n")
    try:
        p = subprocess.Popen([sys.executable, "-c", script, server.url,
                              str(cache), JOB], stderr=subprocess.PIPE,
                             text=True)
        deadline = time.monotonic() + 60
        while server.in_flight < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, (p.returncode, err)
        parts = os.listdir(cache / "tmp")
        assert len(parts) >= 2, parts
        kept = {n.split(".")[0]: os.path.getsize(cache / "tmp" / n)
                for n in parts}
        assert all(k > 0 for k in kept.values()), kept
        server.requests.clear()
        paths = Client(server.url, cache=str(cache)).fetch(JOB)
        # A partial holding the whole file is verified in place; the others
        # are resumed from where they end.
        size = {hashlib.sha256(b).hexdigest(): len(b) for b in files.values()}
        ranges = sorted(rng for _, rng in server.requests if rng)
        assert ranges == sorted("bytes=%d-" % k for h, k in kept.items()
                                if k < size[h]), (ranges, kept)
        assert ranges, "no partial was cut mid-artifact"
    finally:
        server.close()
    assert {k: open(v, "rb").read() for k, v in paths.items()} == files
    assert os.listdir(cache / "tmp") == []
