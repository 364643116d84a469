"""decompd with `blobs = s3://BUCKET/PREFIX` against a real S3-compatible
server (s3rver behind the SigV4 checker, as test_s3.py starts them).

Every blob the daemon keeps — the upload, the job's artifacts — is an
object PREFIX/sha256/<hex> whose SHA-256 is its key; the daemon serves them
back after its own copies are gone (fetched from the object store and
checked), refuses and reports an object whose bytes are not its digest,
and collects the objects on delete. An object store that refuses the
credentials, has no such bucket or does not answer stops the daemon at
start with a message naming it."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from conftest import BIN, Daemon, conv_spec, resnet18_upload  # noqa: E402
from test_s3 import ACCESS_KEY, BUCKET, SECRET_KEY, dead_port, s3rver  # noqa: E402,F401

PREFIX = "cluster-a"


def s3_args(s3, bucket=BUCKET, secret=SECRET_KEY, endpoint=None):
    return ["--blobs", "s3://%s/%s" % (bucket, PREFIX),
            "--s3-endpoint", endpoint or s3["endpoint"],
            "--s3-access-key-id", ACCESS_KEY,
            "--s3-secret-access-key", secret]


def objects(s3):
    """{key: bytes} of every object under PREFIX/, read from s3rver itself
    (which checks no signature)."""
    url = "%s/%s?list-type=2&prefix=%s/" % (s3["direct"], BUCKET, PREFIX)
    with urllib.request.urlopen(url) as r:
        keys = re.findall(r"<Key>([^<]+)</Key>", r.read().decode())
    out = {}
    for k in keys:
        with urllib.request.urlopen("%s/%s/%s" % (s3["direct"], BUCKET, k)) as r:
            out[k] = r.read()
    return out


@pytest.fixture
def daemon(tmp_path, s3rver):
    d = Daemon(tmp_path / "var", s3_args(s3rver))
    yield d
    if d.proc is not None:
        d.stop()


def test_every_blob_is_an_object_named_by_its_digest_fetched_back_checked(
        daemon, s3rver):
    d = daemon.start()
    model, m = resnet18_upload(d)
    status, job = d.json("POST", "/v1/jobs", {"model": m["id"],
                                              "spec": conv_spec(model),
                                              "policy": "budget"})
    assert status == 201, job
    done = d.wait_job(job["id"])
    assert done["state"] == "succeeded", done

    stored = objects(s3rver)
    want = {m["digest"]} | {a["digest"] for a in done["artifacts"]}
    assert {"sha256:" + k.rsplit("/", 1)[1] for k in stored} == want
    for key, body in stored.items():
        assert key.startswith(PREFIX + "/sha256/")
        assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1]

    # the node's own copies gone: served from the object store, checked
    d.stop()
    shutil.rmtree(os.path.join(d.data_dir, "blobs"))
    d.start()
    base = "/v1/jobs/%s/artifacts/" % job["id"]
    for a in done["artifacts"]:
        status, _, body = d.request("GET", base + a["name"])
        assert status == 200
        assert "sha256:" + hashlib.sha256(body).hexdigest() == a["digest"]

    # an object whose bytes are not its digest is refused and reported
    info = next(a for a in done["artifacts"]
                if a["name"] == "decompose_info.json")
    obj = os.path.join(s3rver["dir"], BUCKET, PREFIX, "sha256",
                       info["digest"][7:] + "._S3rver_object")
    with open(obj, "r+b") as f:
        f.seek(10)
        f.write(b"#")
    d.stop()
    shutil.rmtree(os.path.join(d.data_dir, "blobs"))
    d.start()
    status, _, body = d.request("GET", base + "decompose_info.json")
    assert status == 502, body
    assert b"digest_mismatch" in body and info["digest"].encode() in body
    assert not os.listdir(os.path.join(d.data_dir, "blobs", "sha256",
                                       info["digest"][7:9]))  # nothing kept

    # deletes collect the objects
    assert d.request("DELETE", "/v1/jobs/%s" % job["id"])[0] == 204
    assert d.request("DELETE", "/v1/models/%s" % m["id"])[0] == 204
    assert objects(s3rver) == {}


@pytest.mark.parametrize("case", ["wrong_secret", "missing_bucket",
                                  "nothing_listening"])
def test_an_object_store_that_refuses_stops_the_daemon_naming_it(
        tmp_path, s3rver, case):
    if case == "wrong_secret":
        args, says = s3_args(s3rver, secret="not-the-secret"), \
            "SignatureDoesNotMatch"
    elif case == "missing_bucket":
        args, says = s3_args(s3rver, bucket="no-such-bucket"), "no-such-bucket"
    else:
        endpoint = "http://127.0.0.1:%d" % dead_port()
        args, says = s3_args(s3rver, endpoint=endpoint), endpoint
    r = subprocess.run([BIN, "--data-dir", str(tmp_path / "v"),
                        "--listen", "127.0.0.1:0"] + args,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "store_open_failed" in r.stderr and says in r.stderr, r.stderr
    assert "not-the-secret" not in r.stderr
