"""Fetching a job's artifacts several at a time (decompctl fetch --parallel,
decomp_client_fetch_with, Client.fetch(parallel=)) against the real daemon:
the same bytes and digests as one at a time, transfers that really overlap,
several artifacts cut mid-way all resumed, a digest mismatch refused and
reported naming the artifact with nothing left looking complete, artifact
names that are paths refused; and Client.pull of a sharded output, from a
cache holding the engine's shards (the daemon does not produce sharded
artifacts yet: the job record and blobs are made here, and the pull runs
offline from them)."""
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import (DECOMPCTL, Proxy, SmallNet, client_env, ctl, run_job,
                      url_of)

PTH = "decomposed_weights.pth"
ST = "decomposed_weights.safetensors"
INFO = "decompose_info.json"


def tmp_parts(cache):
    d = cache / "tmp"
    return sorted(os.listdir(d)) if d.exists() else []


def server_artifacts(daemon, job):
    _, j = daemon.json("GET", "/v1/jobs/" + job, expect=200)
    return {a["name"]: (a["digest"], a["size"]) for a in j["artifacts"]}


class Tap:
    """A TCP proxy that paces every answer (64 KiB per `pace` seconds per
    connection), records when each connection that asked for an artifact
    sent answer bytes, and optionally rewrites the answers' bytes (same
    length) with `rewrite(bytes) -> bytes`."""

    def __init__(self, port, pace=0.05, rewrite=None):
        self.port, self.pace, self.rewrite = port, pace, rewrite
        self.sends = []  # (connection number, time) of artifact bytes
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.n = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.port))
            self.n += 1
            state = {"artifact": False, "id": self.n}
            threading.Thread(target=self._up, args=(c, u, state),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(u, c, state),
                             daemon=True).start()

    def _up(self, c, u, state):
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                if re.search(rb"GET /v1/jobs/[^/ ]+/artifacts/", b):
                    state["artifact"] = True
                u.sendall(b)
        except OSError:
            pass
        finally:
            try:
                u.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _down(self, u, c, state):
        try:
            while True:
                b = u.recv(65536)
                if not b:
                    break
                if self.rewrite:
                    b = self.rewrite(b)
                if state["artifact"]:
                    with self.lock:
                        self.sends.append((state["id"], time.monotonic()))
                    time.sleep(self.pace)
                c.sendall(b)
        except OSError:
            pass
        finally:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def overlapped(self):
        """Whether two connections sent artifact bytes during the same
        span of time (one's first send before the other's last)."""
        spans = {}
        for cid, t in self.sends:
            a, b = spans.get(cid, (t, t))
            spans[cid] = (min(a, t), max(b, t))
        s = sorted(spans.values())
        return any(s[i + 1][0] < s[i][1] for i in range(len(s) - 1))


def cli_fetch(daemon, cache, job, *args, url=None):
    env = client_env(daemon, cache)
    if url:
        env["DECOMPD_URL"] = url
    return ctl("fetch", job, "--json", *args, env=env)


def test_parallel_fetch_gives_the_same_bytes_and_digests_as_sequential(
        daemon, tmp_path, capsys):
    from decompd.client import Client
    job = run_job(daemon, tmp_path)
    want = server_artifacts(daemon, job)
    assert set(want) == {PTH, ST, INFO}
    got = {}
    for n in (1, 4):
        tap = Tap(daemon.port)
        try:
            r = cli_fetch(daemon, tmp_path / ("cache%d" % n), job,
                          "--parallel", n, "--out", tmp_path / ("out%d" % n),
                          url=tap.url)
            assert r.returncode == 0, r.stderr
            # Two big artifacts paced over several chunks: at once only
            # when asked to.
            assert tap.overlapped() == (n > 1), tap.sends
        finally:
            tap.close()
        files = json.loads(r.stdout)["files"]
        assert [f["name"] for f in files] == list(want)  # the job's order
        # Progress on a pipe: one line per artifact as it is verified.
        for name, (_, size) in want.items():
            assert r.stderr.count("fetched %s:" % name) == 1, r.stderr
        got[n] = {}
        for f in files:
            data = open(f["path"], "rb").read()
            assert f["path"] == str(tmp_path / ("out%d" % n) / f["name"])
            assert "sha256:" + hashlib.sha256(data).hexdigest() == \
                f["digest"] == want[f["name"]][0]
            assert len(data) == f["size"] == want[f["name"]][1]
            assert f["downloaded"] == f["size"] and not f["from_cache"]
            got[n][f["name"]] = data
        assert tmp_parts(tmp_path / ("cache%d" % n)) == []
    assert got[1] == got[4]
    # Python, both ways, through the same pacing proxy.
    for n in (1, 4):
        tap = Tap(daemon.port)
        try:
            capsys.readouterr()
            paths = Client(tap.url, cache=str(tmp_path / ("py%d" % n))).fetch(
                job, dest=tmp_path / ("pyout%d" % n), parallel=n,
                progress=True)
            assert tap.overlapped() == (n > 1), tap.sends
            err = capsys.readouterr().err
            for name, (_, size) in want.items():
                assert err.count("fetched %s: %d bytes" % (name, size)) == 1, \
                    err
        finally:
            tap.close()
        assert list(paths) == list(want)
        for name, p in paths.items():
            assert open(p, "rb").read() == got[1][name]
    # decompctl --parallel is checked.
    for bad in ("0", "33", "x"):
        r = cli_fetch(daemon, tmp_path / "c", job, "--parallel", bad)
        assert r.returncode == 2 and "--parallel" in r.stderr, r.stderr
    with pytest.raises(ValueError, match="parallel"):
        Client(url_of(daemon), cache=str(tmp_path / "c")).fetch(
            job, parallel=0)


def test_artifacts_cut_mid_way_in_a_parallel_fetch_all_resume(daemon, tmp_path):
    from decompd.client import Client, TransferError
    job = run_job(daemon, tmp_path)
    want = server_artifacts(daemon, job)
    big = sorted(n for n in want if want[n][1] > 60000)
    assert len(big) == 2, want
    for which in ("c", "python"):
        cache = tmp_path / ("cache-" + which)
        # Both big answers are cut 50 000 bytes in (the job and info
        # answers are shorter).
        proxy = Proxy(daemon.port, cut_after=50000, cuts=2)
        try:
            if which == "c":
                r = cli_fetch(daemon, cache, job, "--parallel", "4",
                              url=proxy.url)
                assert r.returncode == 6, (r.returncode, r.stderr)
                assert "transfer_interrupted" in r.stderr, r.stderr
                assert any(n in r.stderr for n in big), r.stderr
            else:
                with pytest.raises(TransferError, match="resumes") as e:
                    Client(proxy.url, cache=str(cache)).fetch(job, parallel=4)
                assert any(n in str(e.value) for n in big)
            # Each big transfer under way was cut and kept its partial (one
            # that had not started when the first failed is not started).
            parts = tmp_parts(cache)
            kept = {p.split(".")[0]: os.path.getsize(cache / "tmp" / p)
                    for p in parts}
            assert len(parts) == len(kept) >= 1, parts
            assert set(kept) <= {want[n][0][7:] for n in big}, parts
            assert all(0 < k < 50000 for k in kept.values()), kept
            # Nothing cut looks complete: no blob for a cut artifact.
            for n in big:
                h = want[n][0][7:]
                assert not (cache / "blobs" / "sha256" / h[:2] / h).exists()
            proxy.ranges_seen.clear()
            if which == "c":
                r = cli_fetch(daemon, cache, job, "--parallel", "4",
                              "--out", tmp_path / "out-c", url=proxy.url)
                assert r.returncode == 0, r.stderr
                files = {f["name"]: f for f in json.loads(r.stdout)["files"]}
                for n in big:
                    k = kept.get(want[n][0][7:], 0)
                    assert files[n]["resumed_from"] == k
                    assert files[n]["downloaded"] == want[n][1] - k
                paths = {n: f["path"] for n, f in files.items()}
            else:
                paths = Client(proxy.url, cache=str(cache)).fetch(job)
            assert sorted(proxy.ranges_seen) == sorted(
                "bytes=%d-" % k for k in kept.values())
        finally:
            proxy.close()
        for n, p in paths.items():
            data = open(p, "rb").read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == want[n][0]
        assert tmp_parts(cache) == []


def flip_in_body(marker):
    """A rewrite that flips the byte after `marker` (in an answer body)."""
    def rewrite(b):
        i = b.find(marker)
        if i < 0:
            return b
        j = i + len(marker)
        return b[:j] + bytes([b[j] ^ 0xFF]) + b[j + 1:] if j < len(b) else b
    return rewrite


def test_a_digest_mismatch_is_refused_and_reported_naming_the_artifact(
        daemon, tmp_path):
    from decompd.client import Client, DigestMismatchError
    job = run_job(daemon, tmp_path)
    want = server_artifacts(daemon, job)
    # One byte of the info file's answer is altered on the wire, in every
    # answer.
    tap = Tap(daemon.port, pace=0,
              rewrite=flip_in_body(b'"decompd.decompose_inf'))
    try:
        for which in ("c", "python"):
            cache = tmp_path / ("cache-" + which)
            out = tmp_path / ("out-" + which)
            if which == "c":
                r = cli_fetch(daemon, cache, job, "--parallel", "3", "--out",
                              out, url=tap.url)
                assert r.returncode == 10, (r.returncode, r.stderr)
                assert "digest_mismatch" in r.stderr and INFO in r.stderr
                msg = r.stderr
            else:
                with pytest.raises(DigestMismatchError) as e:
                    Client(tap.url, cache=str(cache)).fetch(job, dest=out)
                msg = str(e.value)
            print(msg)
            assert INFO in msg and want[INFO][0] in msg
            # Refused: no blob, no partial, nothing copied to DEST. The
            # others are in the cache, verified, unless the failure came
            # before they started (nothing starts after a failure: on a
            # loaded machine a transfer's thread may begin after the small
            # info file has failed).
            h = want[INFO][0][7:]
            assert not (cache / "blobs" / "sha256" / h[:2] / h).exists()
            assert tmp_parts(cache) == []
            assert not out.exists() or os.listdir(out) == []
            for n in (PTH, ST):
                h = want[n][0][7:]
                blob = cache / "blobs" / "sha256" / h[:2] / h
                if blob.exists():
                    assert hashlib.sha256(blob.read_bytes()).hexdigest() == h, n
            assert not (cache / "jobs" / (job + ".json")).exists()
    finally:
        tap.close()


def test_a_corrupted_partial_file_is_not_trusted(daemon, tmp_path):
    """A leftover partial of wrong bytes for every artifact at once: each is
    resumed, fails its digest, is fetched again whole and verified."""
    from conftest import daemon_blob_file
    job = run_job(daemon, tmp_path)
    want = server_artifacts(daemon, job)
    cache = tmp_path / "cache"
    (cache / "tmp").mkdir(parents=True)
    for n, (d, size) in want.items():
        good = open(daemon_blob_file(daemon, d[7:]), "rb").read()
        bad = bytearray(good[:size // 2])
        bad[0] ^= 0xFF
        (cache / "tmp" / (d[7:] + ".old.part")).write_bytes(bytes(bad))
    r = cli_fetch(daemon, cache, job, "--parallel", "4")
    assert r.returncode == 0, r.stderr
    for f in json.loads(r.stdout)["files"]:
        size = want[f["name"]][1]
        assert f["downloaded"] == (size - size // 2) + size, f
        data = open(f["path"], "rb").read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == f["digest"]
    assert tmp_parts(cache) == []


@pytest.mark.parametrize("evil", [b"../ompose_info.json",
                                  b"/tmp/pose_info.json",
                                  b".decompose_info.jso"])
def test_artifact_names_that_are_paths_are_refused(daemon, tmp_path, evil):
    from decompd.client import Client, ServerError
    job = run_job(daemon, tmp_path)
    assert len(evil) == len(INFO)
    # The job's answer is rewritten (same length) to list the info file
    # under a name that is not a plain file name.
    tap = Tap(daemon.port, pace=0,
              rewrite=lambda b: b.replace(b'"' + INFO.encode() + b'"',
                                          b'"' + evil + b'"'))
    try:
        out = tmp_path / "dest" / "out"
        r = cli_fetch(daemon, tmp_path / "cache", job, "--out", out,
                      url=tap.url)
        assert r.returncode != 0 and "refused" in r.stderr, r.stderr
        with pytest.raises(ServerError, match="refused"):
            Client(tap.url, cache=str(tmp_path / "pycache")).fetch(
                job, dest=out)
    finally:
        tap.close()
    assert not out.exists()
    assert not (tmp_path / "dest" / "ompose_info.json").exists()
    assert not os.path.exists("/tmp/pose_info.json")


def test_pull_of_a_sharded_output_loads_the_shards_from_the_cache(tmp_path):
    """The loading path of a sharded job: a cache holding a job record whose
    artifacts are the engine's sharded output (decompctl decompose
    --shard-bytes), pulled offline, gives the model the .pth output gives."""
    import torch
    from decompd.client import Client, blob_path, job_record_path
    from decompd.tensor_decompose import decompose_network
    w, s = SmallNet.write(tmp_path)
    outs = {}
    for fmt, extra in (("safetensors", ["--shard-bytes", "40K"]),
                       ("pth", [])):
        outs[fmt] = tmp_path / fmt
        p = subprocess.run([DECOMPCTL, "decompose", "--weights", w, "--spec",
                            s, "--out", str(outs[fmt]), "--format", fmt,
                            "--quiet", *extra], capture_output=True,
                           text=True, timeout=600,
                           env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        assert p.returncode == 0, p.stderr
    names = sorted(os.listdir(outs["safetensors"]))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) >= 3 and "model.safetensors.index.json" in names
    cache = tmp_path / "cache"
    arts = []
    for n in names:
        data = (outs["safetensors"] / n).read_bytes()
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        os.makedirs(os.path.dirname(blob_path(str(cache), d)), exist_ok=True)
        open(blob_path(str(cache), d), "wb").write(data)
        arts.append({"name": n, "digest": d, "size": len(data),
                     "media_type": "application/octet-stream"})
    jid = "j_00000000000000aa"
    rec = {"format": "decompd.cache.job", "version": 1,
           "server": "http://127.0.0.1:1",
           "job": {"id": jid, "state": "succeeded", "artifacts": arts},
           "artifacts": {a["name"]: a for a in arts}}
    os.makedirs(os.path.dirname(job_record_path(str(cache), jid)))
    open(job_record_path(str(cache), jid), "w").write(json.dumps(rec))

    c = Client("http://127.0.0.1:1", cache=str(cache), offline=True)
    got, changes = c.pull(SmallNet.make(seed=3), jid)
    ref, ref_changes = decompose_network(
        SmallNet.make(seed=4), str(outs["pth"] / "decompose_info.json"))
    ref.load_state_dict(torch.load(outs["pth"] / PTH, weights_only=True))
    assert changes == ref_changes and changes
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k

    # A shard the job lists that the index leaves out is refused.
    from decompd import SafetensorsError
    extra = dict(arts[-1], name="model-00099-of-00099.safetensors")
    rec["job"]["artifacts"] = arts + [extra]
    open(job_record_path(str(cache), jid), "w").write(json.dumps(rec))
    with pytest.raises(SafetensorsError, match="not referenced"):
        c.pull(SmallNet.make(seed=3), jid)
    # A shard the index names that the job does not list: not found.
    from decompd.client import NotFoundError
    rec["job"]["artifacts"] = [a for a in arts if a["name"] != shards[0]]
    open(job_record_path(str(cache), jid), "w").write(json.dumps(rec))
    with pytest.raises(NotFoundError, match=shards[0]):
        c.pull(SmallNet.make(seed=3), jid)
