"""Each client error, from decompctl (message on stderr, --json error
object, exit code) and from decompd.client (exception class): connection
refused, 401, 403, 404, digest mismatch, full disk, offline miss."""
import json
import os

import pytest

from conftest import (SmallNet, blob_hex, client_env, ctl, daemon_blob_file,
                      run_job, url_of)

PTH = "decomposed_weights.pth"


def err_json(r):
    return json.loads(r.stdout)["error"]


def test_connection_refused(tmp_path, daemon_factory):
    from conftest import Daemon  # noqa: F401  (the harness is importable)
    from decompd.client import Client, ConnectError
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    env = {"DECOMPD_URL": "http://127.0.0.1:%d" % port,
           "DECOMPD_CACHE": str(tmp_path / "c")}
    for args in (("jobs",), ("status", "j_0123456789abcdef"),
                 ("fetch", "j_0123456789abcdef"),
                 ("upload", __file__), ("wait", "j_0123456789abcdef")):
        r = ctl(*args, "--json", env=env)
        assert r.returncode == 6, (args, r.returncode, r.stderr)
        assert "cannot connect to http://127.0.0.1:%d" % port in r.stderr
        assert err_json(r) == {"code": "connect_failed", "exit": 6,
                               "message": err_json(r)["message"]}
    with pytest.raises(ConnectError, match="cannot connect") as e:
        Client(env["DECOMPD_URL"]).jobs()
    assert isinstance(e.value, ConnectionError) and e.value.code == 60


def test_401_and_403(daemon, tmp_path):
    from decompd.client import AuthError, Client
    w, s = SmallNet.write(tmp_path)
    read = daemon.run_cli("token", "create", "--role", "read", "--name",
                          "reader").stdout.strip()
    env = client_env(daemon, tmp_path / "c")
    # No token once tokens exist: 401.
    r = ctl("upload", w, env=env)
    assert r.returncode == 7, r.stderr
    assert "401 unauthorized" in r.stderr and "set DECOMPD_TOKEN" in r.stderr
    # An unknown token: 401.
    r = ctl("jobs", "--json", env=dict(env, DECOMPD_TOKEN="dcp_" + "0" * 64))
    assert r.returncode == 7 and err_json(r)["code"] == "unauthorized"
    assert "was not accepted" in r.stderr
    assert "dcp_" + "0" * 64 not in r.stderr  # the token is never echoed
    # A read token uploading: 403.
    r = ctl("upload", w, env=dict(env, DECOMPD_TOKEN=read))
    assert r.returncode == 7 and "403 forbidden" in r.stderr, r.stderr
    # ... but listing is fine.
    assert ctl("jobs", env=dict(env, DECOMPD_TOKEN=read)).returncode == 0
    with pytest.raises(AuthError, match="401") as e:
        Client(url_of(daemon), token="").jobs()
    assert isinstance(e.value, PermissionError) and e.value.code_name == "unauthorized"
    with pytest.raises(AuthError, match="403") as e:
        Client(url_of(daemon), token=read).upload(w)
    assert e.value.code_name == "forbidden"


def test_404(daemon, tmp_path):
    from decompd.client import Client, NotFoundError
    env = client_env(daemon, tmp_path / "c")
    for args in (("status", "j_0123456789abcdef"),
                 ("wait", "j_0123456789abcdef"),
                 ("cancel", "j_0123456789abcdef"),
                 ("fetch", "j_0123456789abcdef"),
                 ("submit", "m_0123456789abcdef", "--spec", __file__ + ".none")):
        r = ctl(*args, "--json", env=env)
        if args[0] == "submit":
            assert r.returncode == 3  # the spec file is missing: bad input
            continue
        assert r.returncode == 8, (args, r.returncode, r.stderr)
        assert "404 not_found" in r.stderr and err_json(r)["code"] == "not_found"
    with pytest.raises(NotFoundError) as e:
        Client(url_of(daemon)).job("j_0123456789abcdef")
    assert isinstance(e.value, LookupError)
    job = run_job(daemon, tmp_path)
    with pytest.raises(NotFoundError, match="no artifact"):
        Client(url_of(daemon), cache=str(tmp_path / "c")).fetch(job, only="nope")
    r = ctl("fetch", job, "--only", "nope", env=env)
    assert r.returncode == 8 and "no artifact" in r.stderr


def test_digest_mismatch(daemon, tmp_path):
    """The daemon's stored blob rots (same size, one byte flipped): every
    fresh fetch refuses it and keeps nothing."""
    from decompd.client import Client, DigestMismatchError
    job = run_job(daemon, tmp_path)
    hexd, size = blob_hex(daemon, job, PTH)
    path = daemon_blob_file(daemon, hexd)
    b = bytearray(open(path, "rb").read())
    b[size // 3] ^= 0x01
    os.chmod(path, 0o644)
    open(path, "wb").write(bytes(b))
    cache = tmp_path / "c"
    r = ctl("fetch", job, "--only", PTH, "--json", env=client_env(daemon, cache))
    assert r.returncode == 10, (r.returncode, r.stderr)
    assert "digest_mismatch" in r.stderr and hexd in r.stderr
    assert err_json(r)["code"] == "digest_mismatch"
    assert not (cache / "blobs" / "sha256" / hexd[:2] / hexd).exists()
    assert os.listdir(cache / "tmp") == []
    with pytest.raises(DigestMismatchError, match="discarded"):
        Client(url_of(daemon), cache=str(tmp_path / "py")).fetch(job, only=PTH)
    assert os.listdir(tmp_path / "py" / "tmp") == []


def test_disk_full(daemon, tmp_path, tiny_tmpfs):
    """The cache on a 32 KiB tmpfs: the weights do not fit, ENOSPC is
    reported as disk_full (exit 4) and the partial file is removed."""
    from decompd.client import Client, DiskFullError
    job = run_job(daemon, tmp_path)
    _, size = blob_hex(daemon, job, PTH)
    assert size > 64 * 1024
    r = ctl("fetch", job, "--only", PTH, "--json",
            env=client_env(daemon, tiny_tmpfs / "c"))
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "No space left on device" in r.stderr and "disk_full" in r.stderr
    assert err_json(r)["code"] == "disk_full"
    assert os.listdir(tiny_tmpfs / "c" / "tmp") == []
    with pytest.raises(DiskFullError, match="no space left") as e:
        Client(url_of(daemon), cache=str(tiny_tmpfs / "py")).fetch(job, only=PTH)
    assert isinstance(e.value, OSError) and e.value.errno == 28
    assert os.listdir(tiny_tmpfs / "py" / "tmp") == []
    # The cache elsewhere, the destination on the full disk: same error.
    r = ctl("fetch", job, "--only", PTH, "--out", tiny_tmpfs / "out",
            env=client_env(daemon, tmp_path / "c2"))
    assert r.returncode == 4 and "No space left" in r.stderr
    assert [n for n in os.listdir(tiny_tmpfs / "out")] == []


def test_bad_input_is_the_servers_code(daemon, tmp_path):
    from decompd.client import Client, ServiceValueError
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not weights at all")
    r = ctl("upload", bad, "--json", env=client_env(daemon, tmp_path / "c"))
    assert r.returncode == 3 and err_json(r)["code"] == "unknown_format", r.stderr
    with pytest.raises(ServiceValueError) as e:
        Client(url_of(daemon)).upload(str(bad))
    assert e.value.code_name == "unknown_format"
    w, s = SmallNet.write(tmp_path)
    r = ctl("submit", w, "--spec", s, "--policy", "nonsense",
            env=client_env(daemon, tmp_path / "c"))
    assert r.returncode == 3 and "bad_policy" in r.stderr, r.stderr
