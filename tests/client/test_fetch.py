"""Fetching into the verified cache: a download cut off mid-way resumes
with Range and verifies; a 200 answer to a Range request starts over; a
leftover partial file (even a wrong one) is resumed or replaced; a corrupt
cache file is detected and fetched again; with the daemon stopped, offline
mode still pulls a job fetched before. Both clients (decompctl and
decompd.client) share one cache layout."""
import hashlib
import json
import os

import pytest

from conftest import (Proxy, SmallNet, blob_hex, client_env, ctl, run_job,
                      url_of)

PTH = "decomposed_weights.pth"


def tmp_parts(cache):
    d = cache / "tmp"
    return sorted(os.listdir(d)) if d.exists() else []


def test_cli_fetch_cut_mid_download_resumes_and_verifies(daemon, tmp_path):
    job = run_job(daemon, tmp_path)
    hexd, size = blob_hex(daemon, job, PTH)
    cache = tmp_path / "cache"
    # The proxy closes the connection 20 000 bytes into its answers: after
    # the job and the info file, inside the weights, when the artifacts
    # come one at a time (test_fetch_parallel.py cuts parallel fetches).
    proxy = Proxy(daemon.port, cut_after=20000, cuts=1)
    try:
        env = client_env(daemon, cache, DECOMPD_URL=proxy.url)
        r = ctl("fetch", job, "--parallel", "1", env=env)
        assert r.returncode == 6, (r.returncode, r.stderr)
        assert "transfer_interrupted" in r.stderr and "resumes" in r.stderr
        parts = tmp_parts(cache)
        assert len(parts) == 1 and parts[0].startswith(hexd + "."), parts
        kept = os.path.getsize(cache / "tmp" / parts[0])
        assert 0 < kept < size
        assert not (cache / "blobs" / "sha256" / hexd[:2] / hexd).exists()

        r = ctl("fetch", job, "--json", "--out", tmp_path / "out", env=env)
        assert r.returncode == 0, r.stderr
        files = {f["name"]: f for f in json.loads(r.stdout)["files"]}
        assert files[PTH]["resumed_from"] == kept
        assert files[PTH]["downloaded"] == size - kept
        assert proxy.ranges_seen == ["bytes=%d-" % kept]
    finally:
        proxy.close()
    data = (tmp_path / "out" / PTH).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexd and len(data) == size
    assert tmp_parts(cache) == []


def test_python_fetch_cut_then_resumes(daemon, tmp_path):
    from decompd.client import Client, TransferError
    job = run_job(daemon, tmp_path)
    hexd, size = blob_hex(daemon, job, PTH)
    cache = tmp_path / "pycache"
    proxy = Proxy(daemon.port, cut_after=30000, cuts=1)
    try:
        c = Client(proxy.url, cache=str(cache))
        with pytest.raises(TransferError, match="resumes"):
            c.fetch(job, only=PTH)
        parts = tmp_parts(cache)
        assert len(parts) == 1
        kept = os.path.getsize(cache / "tmp" / parts[0])
        assert 0 < kept < size
        paths = c.fetch(job)
        assert proxy.ranges_seen == ["bytes=%d-" % kept]
    finally:
        proxy.close()
    with open(paths[PTH], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hexd
    assert tmp_parts(cache) == []


def test_server_answering_200_to_a_range_starts_over(daemon, tmp_path):
    from decompd.client import Client
    job = run_job(daemon, tmp_path)
    hexd, size = blob_hex(daemon, job, PTH)
    good = open(_daemon_blob(daemon, hexd), "rb").read()
    for which in ("c", "python"):
        cache = tmp_path / ("cache-" + which)
        (cache / "tmp").mkdir(parents=True)
        (cache / "tmp" / (hexd + ".seeded.part")).write_bytes(good[:size // 2])
        proxy = Proxy(daemon.port, strip_range=True)
        try:
            if which == "c":
                r = ctl("fetch", job, "--only", PTH, "--json",
                        env=client_env(daemon, cache, DECOMPD_URL=proxy.url))
                assert r.returncode == 0, r.stderr
                f = json.loads(r.stdout)["files"][0]
                assert f["resumed_from"] == 0 and f["downloaded"] == size
                path = f["path"]
            else:
                path = Client(proxy.url, cache=str(cache)).fetch(job, only=PTH)[PTH]
            assert proxy.ranges_seen == ["bytes=%d-" % (size // 2)]
        finally:
            proxy.close()
        assert open(path, "rb").read() == good
        assert tmp_parts(cache) == []


def _daemon_blob(daemon, hexd):
    from conftest import daemon_blob_file
    return daemon_blob_file(daemon, hexd)


def test_leftover_partial_is_resumed_and_a_wrong_one_replaced(daemon, tmp_path):
    from decompd.client import Client
    job = run_job(daemon, tmp_path)
    hexd, size = blob_hex(daemon, job, PTH)
    good = open(_daemon_blob(daemon, hexd), "rb").read()
    half = size // 2
    # A good prefix (a fetch killed earlier, by either client): resumed.
    cache = tmp_path / "cache"
    (cache / "tmp").mkdir(parents=True)
    (cache / "tmp" / (hexd + ".1234-dead.part")).write_bytes(good[:half])
    r = ctl("fetch", job, "--only", PTH, "--json", env=client_env(daemon, cache))
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)["files"][0]
    assert f["resumed_from"] == half and f["downloaded"] == size - half
    assert open(f["path"], "rb").read() == good
    # A prefix of other bytes: the resumed file fails its digest, so the
    # fetch starts over once and succeeds.
    for which in ("c", "python"):
        cache = tmp_path / ("bad-" + which)
        (cache / "tmp").mkdir(parents=True)
        (cache / "tmp" / (hexd + ".x.part")).write_bytes(b"\0" * half)
        if which == "c":
            r = ctl("fetch", job, "--only", PTH, "--json",
                    env=client_env(daemon, cache))
            assert r.returncode == 0, r.stderr
            f = json.loads(r.stdout)["files"][0]
            assert f["downloaded"] == (size - half) + size
            path = f["path"]
        else:
            path = Client(url_of(daemon), cache=str(cache)).fetch(job, only=PTH)[PTH]
        assert open(path, "rb").read() == good
        assert tmp_parts(cache) == []


def test_corrupt_cache_file_is_detected_and_fetched_again(daemon, tmp_path):
    from decompd.client import Client
    job = run_job(daemon, tmp_path)
    hexd, size = blob_hex(daemon, job, PTH)
    cache = tmp_path / "cache"
    env = client_env(daemon, cache)
    assert ctl("fetch", job, env=env).returncode == 0
    blob = cache / "blobs" / "sha256" / hexd[:2] / hexd
    good = blob.read_bytes()

    def corrupt():
        b = bytearray(good)
        b[len(b) // 2] ^= 0xFF
        blob.write_bytes(bytes(b))

    corrupt()
    r = ctl("fetch", job, "--json", env=env)
    assert r.returncode == 0, r.stderr
    files = {f["name"]: f for f in json.loads(r.stdout)["files"]}
    assert files[PTH]["downloaded"] == size and not files[PTH]["from_cache"]
    assert files["decompose_info.json"]["from_cache"]
    assert blob.read_bytes() == good

    corrupt()
    c = Client(url_of(daemon), cache=str(cache))
    c.fetch(job)
    assert blob.read_bytes() == good

    # Offline, a corrupt file cannot be fetched again: digest mismatch.
    corrupt()
    r = ctl("fetch", job, env=dict(env, DECOMPD_OFFLINE="1"))
    assert r.returncode == 10 and "corrupt" in r.stderr, r.stderr
    from decompd.client import DigestMismatchError
    with pytest.raises(DigestMismatchError, match="corrupt"):
        Client(url_of(daemon), cache=str(cache), offline=True).fetch(job)


def test_offline_pull_with_the_daemon_stopped(daemon, tmp_path):
    import torch
    from decompd.client import Client, OfflineMissError
    job = run_job(daemon, tmp_path)
    cache = tmp_path / "cache"
    online = Client(url_of(daemon), cache=str(cache))
    ref, ref_changes = online.pull(SmallNet.make(seed=5), job)
    # pull took the weights and the info file; decompctl takes all three.
    assert ctl("fetch", job, env=client_env(daemon, cache)).returncode == 0
    port = daemon.port
    daemon.stop()
    env = client_env(daemon, cache, DECOMPD_OFFLINE="1")
    env["DECOMPD_URL"] = "http://127.0.0.1:%d" % port
    # decompctl: status and fetch from the cache, no connection.
    r = ctl("status", job, env=env)
    assert r.returncode == 0 and "succeeded" in r.stdout, r.stderr
    r = ctl("fetch", job, "--out", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [
        "decompose_info.json", "decomposed_weights.pth",
        "decomposed_weights.safetensors"]
    # Python, offline through the environment, as a training job would.
    os.environ["DECOMPD_OFFLINE"] = "1"
    try:
        c = Client("http://127.0.0.1:%d" % port, cache=str(cache))
        assert c.offline
        model, changes = c.pull(SmallNet.make(seed=9), job)
    finally:
        del os.environ["DECOMPD_OFFLINE"]
    assert changes == ref_changes
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    # A job never fetched: a clear miss, still no connection.
    with pytest.raises(OfflineMissError, match="not in the cache"):
        c.pull(SmallNet.make(), "j_0123456789abcdef")
    r = ctl("fetch", "j_0123456789abcdef", env=env)
    assert r.returncode == 8 and "offline_miss" in r.stderr
    # Online, the stopped daemon is a connection error.
    r = ctl("fetch", job, env=dict(env, DECOMPD_OFFLINE="0"))
    assert r.returncode == 6 and "connect" in r.stderr
