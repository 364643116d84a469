"""`blobs = file:PATH`: the blob folder apart from the data dir (a mount
several nodes share). Every blob the daemon keeps — the upload, the job's
artifacts — lands under PATH/sha256/ab/<hex> with the SHA-256 its name
says, nothing under DATA_DIR/blobs; on another file system than the data
dir (whose tmp/ receives uploads) the blob is copied in whole, never left
half-written; a delete collects from there; a bad value is refused at
start-up."""
import hashlib
import os
import subprocess

import pytest

from conftest import BIN, conv_spec, resnet18_upload


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another file system than tmp_path: a tmpfs mount (root
    in a container may mount one), else /dev/shm when it is one."""
    mnt = tmp_path / "shared"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755",
                        "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode == 0:
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        return
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        import tempfile
        with tempfile.TemporaryDirectory(dir=shm) as d:
            yield d
        return
    pytest.skip("no second file system here (mount: %s)" % r.stderr.strip())


def blob_files(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            out[f] = os.path.join(root, f)
    return out


def test_blobs_on_another_file_system_hold_every_blob_by_its_digest(
        daemon_factory, other_fs, tmp_path):
    assert os.stat(other_fs).st_dev != os.stat(tmp_path).st_dev
    d = daemon_factory(args=("--blobs", "file:%s" % other_fs)).start()
    model, m = resnet18_upload(d)
    status, job = d.json("POST", "/v1/jobs", {"model": m["id"],
                                              "spec": conv_spec(model),
                                              "policy": "budget"})
    assert status == 201, job
    done = d.wait_job(job["id"])
    assert done["state"] == "succeeded", done

    files = blob_files(os.path.join(other_fs, "sha256"))
    want = {m["digest"]} | {a["digest"] for a in done["artifacts"]}
    assert {"sha256:" + h for h in files} == want
    for hexd, path in files.items():
        assert os.path.basename(os.path.dirname(path)) == hexd[:2]
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == hexd
    # nothing half-copied beside them, nothing in the data dir's folder
    assert not [n for n in os.listdir(other_fs) if n != "sha256"]
    assert not os.path.exists(os.path.join(d.data_dir, "blobs", "sha256")) or \
        not blob_files(os.path.join(d.data_dir, "blobs", "sha256"))
    # served from there, byte for byte
    for a in done["artifacts"]:
        body = d.request("GET", "/v1/jobs/%s/artifacts/%s"
                         % (job["id"], a["name"]))[2]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == a["digest"]

    # deletes collect from the folder
    assert d.request("DELETE", "/v1/jobs/%s" % job["id"])[0] == 204
    assert d.request("DELETE", "/v1/models/%s" % m["id"])[0] == 204
    assert blob_files(os.path.join(other_fs, "sha256")) == {}


def test_a_bad_blobs_value_is_refused_at_start(tmp_path):
    for value in ("s4://bucket", "file:", "/abs/path", ""):
        r = subprocess.run([BIN, "--data-dir", str(tmp_path / "v"),
                            "--blobs", value],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (value, r.stderr)
        assert "bad value for blobs" in r.stderr, (value, r.stderr)
