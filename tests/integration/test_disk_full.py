"""A full data disk, for real: the daemon's data dir on a small tmpfs (a
loop-mounted ext4 image where tmpfs cannot be mounted) filled to the last
block. Writes to the index answer 507 disk_full (they answered 500
store_error), an upload's 507 names no server path, and an admin's DELETE
still gets through (the daemon keeps a reserve file it frees for it), after
which the daemon works again."""
import errno
import io
import json
import os
import shutil
import subprocess

import pytest
import torch

from conftest import TEST_INDEX, assert_problem, conv_spec, pg_only_skip

DISK_MB = 64
RESERVE = 4 << 20


def _mount(dirpath, workdir):
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % DISK_MB,
                        "tmpfs", dirpath], capture_output=True, text=True)
    if r.returncode == 0:
        return "tmpfs", None
    why = "tmpfs: " + (r.stderr.strip() or "mount failed")
    img = os.path.join(workdir, "disk.img")
    with open(img, "wb") as f:
        f.truncate(DISK_MB << 20)
    steps = [["mkfs.ext4", "-q", "-F", "-m", "0", img],
             ["mount", "-o", "loop", img, dirpath]]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            r = None
            err = str(e)
        if r is None or r.returncode != 0:
            why += "; loop device: " + (err if r is None else r.stderr.strip())
            return None, why
    return "ext4", None


@pytest.fixture
def small_disk(tmp_path):
    """A DISK_MB file system of its own, unmounted at the end."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    kind, why = _mount(str(mnt), str(tmp_path))
    if kind is None:
        pytest.skip("cannot mount a small file system here, so a full disk "
                    "cannot be made (CI runs as root and can): " + why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path):
    """Write `path` until the file system has no block left."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 512, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
        try:
            os.fsync(f.fileno())
        except OSError:
            pass


def weights(seed, cin, cout, k=3):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, padding=1))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def tokens(d):
    return {role: d.run_cli("token", "create", "--role", role, "--name", role).stdout.strip()
            for role in ("submit", "admin")}


@pg_only_skip("the index is in PostgreSQL, not on the full data disk: its writes "
              "(a submit, a spec) do not answer 507 there, and the reserve that "
              "lets a delete through is the embedded index's")
def test_full_disk_answers_507_and_an_admin_delete_still_frees_space(daemon_factory,
                                                                     small_disk):
    d = daemon_factory(args=["--workers", "1"])
    d.data_dir = str(small_disk / "var")
    d.start()
    assert "reserve=yes" in d.log()
    assert os.path.getsize(os.path.join(d.data_dir, "decompd.reserve")) == RESERVE
    tok = tokens(d)
    big_net, big = weights(1, 512, 512)        # 9.4 MB: deleting it frees room
    small_net, small = weights(2, 32, 64)
    status, mbig = d.upload(big, name="big", token=tok["submit"])
    assert status == 201, mbig
    status, msmall = d.upload(small, name="small", token=tok["submit"])
    assert status == 201, msmall

    fill(str(small_disk / "filler"))
    spec = conv_spec(small_net)
    status, hdrs, body = d.request("POST", "/v1/jobs", {"model": msmall["id"], "spec": spec},
                                   token=tok["submit"])
    doc = assert_problem(status, hdrs, body, 507, "disk_full")
    status, hdrs, body = d.request("PUT", "/v1/models/%s/spec" % msmall["id"], spec,
                                   token=tok["submit"])
    assert_problem(status, hdrs, body, 507, "disk_full")
    _, other = weights(3, 64, 64)
    status, hdrs, body = d.request("POST", "/v1/models?name=x", other, token=tok["submit"],
                                   headers={"Content-Type": "application/octet-stream"})
    doc = assert_problem(status, hdrs, body, 507, "disk_full")
    # what failed, not where: no server path in any of these answers
    for text in (body.decode(),):
        assert str(small_disk) not in text and "/tmp/" not in text, text
        assert "upload-" not in text, text
    assert os.listdir(os.path.join(d.data_dir, "tmp")) == []
    assert d.request("GET", "/readyz")[0] == 200
    assert d.json("GET", "/v1/models", token=tok["submit"], expect=200)[1]["models"]

    # The way out: an admin deletes a model, on the full disk.
    status, hdrs, body = d.request("DELETE", "/v1/models/" + mbig["id"], token=tok["admin"])
    assert status == 204, body
    assert d.request("GET", "/v1/models/" + mbig["id"], token=tok["submit"])[0] == 404
    # its blob is gone and the reserve is back
    assert os.path.getsize(os.path.join(d.data_dir, "decompd.reserve")) == RESERVE
    assert shutil.disk_usage(str(small_disk)).free >= 4 << 20
    # ... and the daemon works again
    status, j = d.json("POST", "/v1/jobs", {"model": msmall["id"], "spec": spec},
                       token=tok["submit"])
    assert status == 201, j
    assert d.wait_job(j["id"], token=tok["submit"])["state"] == "succeeded"
    status, hdrs, body = d.request("PUT", "/v1/models/%s/spec" % msmall["id"], spec,
                                   token=tok["submit"])
    assert status == 200, body
    assert json.loads(body)["layers"][0]["name"] == "0"


@pytest.mark.skipif(not TEST_INDEX, reason="the index in PostgreSQL (suite "
                    "integration-pg): the embedded one is the test above")
def test_full_data_disk_refuses_blobs_while_the_postgresql_index_takes_writes(
        daemon_factory, small_disk):
    """The index is not on the full disk: an upload answers 507 naming no
    server path, while a spec, a submit and a delete (which frees the room)
    go through, and uploads work again after it."""
    d = daemon_factory(args=["--workers", "1"])
    d.data_dir = str(small_disk / "var")
    d.start()
    tok = tokens(d)
    big_net, big = weights(1, 512, 512)
    small_net, small = weights(2, 32, 64)
    status, mbig = d.upload(big, name="big", token=tok["submit"])
    assert status == 201, mbig
    status, msmall = d.upload(small, name="small", token=tok["submit"])
    assert status == 201, msmall
    fill(str(small_disk / "filler"))
    _, other = weights(3, 64, 64)
    status, hdrs, body = d.request("POST", "/v1/models?name=x", other, token=tok["submit"],
                                   headers={"Content-Type": "application/octet-stream"})
    assert_problem(status, hdrs, body, 507, "disk_full")
    assert str(small_disk) not in body.decode() and "upload-" not in body.decode()
    assert os.listdir(d.tmp_dir()) == []
    spec = conv_spec(small_net)
    status, hdrs, body = d.request("PUT", "/v1/models/%s/spec" % msmall["id"], spec,
                                   token=tok["submit"])
    assert status == 200, body
    assert d.request("GET", "/readyz")[0] == 200
    status, hdrs, body = d.request("DELETE", "/v1/models/" + mbig["id"], token=tok["admin"])
    assert status == 204, body
    assert shutil.disk_usage(str(small_disk)).free >= 4 << 20
    status, m = d.upload(other, name="x", token=tok["submit"])
    assert status == 201, m
    status, j = d.json("POST", "/v1/jobs", {"model": msmall["id"]}, token=tok["submit"])
    assert status == 201, j
    assert d.wait_job(j["id"], token=tok["submit"])["state"] == "succeeded"


def test_a_job_that_failed_for_want_of_space_runs_again_once_retried(daemon_factory,
                                                                      small_disk):
    """The disk fills while a job runs: it fails disk_full (its message
    naming no server path), the submit role retries it once space is back,
    and it succeeds as its second attempt."""
    d = daemon_factory(args=["--workers", "1"])
    d.data_dir = str(small_disk / "var")
    d.start()
    net, data = weights(4, 512, 512)  # outputs of several MB each
    status, m = d.upload(data)
    assert status == 201, m
    filler = str(small_disk / "filler")
    fill(filler)
    with open(filler, "r+b") as f:  # room for the index, not the outputs
        f.truncate(os.path.getsize(filler) - (1 << 20))
    status, j = d.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net),
                                             "policy": {"name": "ratio", "ratio": 0.5}})
    assert status == 201, j
    failed = d.wait_job(j["id"])
    assert failed["state"] == "failed", failed
    assert failed["error"]["code"] == "disk_full", failed
    msg = failed["error"]["message"]
    assert str(small_disk) not in msg and "/tmp/" not in msg and "/var" not in msg, msg
    assert os.listdir(d.tmp_dir()) == []
    os.unlink(filler)
    status, r = d.json("POST", "/v1/jobs/%s/retry" % j["id"])
    assert status == 200 and r["state"] in ("queued", "running"), r
    done = d.wait_job(j["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert len(done["artifacts"]) == 3
