"""decompd store migrate: an embedded install (SQLite + its blob folder)
copied into PostgreSQL (+ a blob folder of the destination's), with the
same ids, every blob hashed again on its way in.

Run under pg_server.py (a real, throwaway PostgreSQL; DECOMPD_TEST_INDEX):
the source daemon is forced onto the embedded index, every destination
gets a database of its own (conftest.index_for)."""
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import torch
import torchvision

from conftest import (BIN, TEST_INDEX, Daemon, calibration_bytes, conv_spec,
                      free_port, index_sql, latency_profile)
from test_calibration import Head, head_grams, head_spec
from test_sharded import small_model, split, upload_checkpoint

pytestmark = pytest.mark.skipif(not TEST_INDEX, reason="needs pg_server.py "
                                "(DECOMPD_TEST_INDEX): the destination is PostgreSQL")

ENV = {"OPENBLAS_NUM_THREADS": "1"}
EMBEDDED = dict(ENV, DECOMPD_INDEX="sqlite")
ARGS = ["--workers", "1", "--blas-threads", "1"]
FIXED = {"name": "fixed", "rank": 4, "types": ["Conv2d", "Linear"],
         "require_cheaper": False}


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def jobs_of(d, token):
    out, cursor = [], None
    while True:
        path = "/v1/jobs?limit=100" + ("&cursor=" + cursor if cursor else "")
        _, page = d.json("GET", path, token=token, expect=200)
        out += page["jobs"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def snapshot(d, token):
    """Every model and job document, by id, and the bytes (by digest) of
    every blob they name, read through the daemon's API."""
    models = {m["id"]: d.json("GET", "/v1/models/" + m["id"], token=token, expect=200)[1]
              for m in d.json("GET", "/v1/models", token=token, expect=200)[1]["models"]}
    jobs = {j["id"]: d.json("GET", "/v1/jobs/" + j["id"], token=token, expect=200)[1]
            for j in jobs_of(d, token)}
    blobs = {}

    def fetch(digest):
        status, _, body = d.request("GET", "/v1/blobs/" + digest, token=token)
        assert status == 200, (digest, status, body[:200])
        assert sha(body) == digest
        blobs[digest] = hashlib.sha256(body).hexdigest()

    for m in models.values():
        fetch(m["digest"])
        for s in (m.get("shards") or []):
            fetch(s["digest"])
        for k in ("calibration", "profile"):
            if m.get(k):
                fetch(m[k]["digest"])
    for j in jobs.values():
        for a in j.get("artifacts") or []:
            status, _, body = d.request(
                "GET", "/v1/jobs/%s/artifacts/%s" % (j["id"], a["name"]), token=token)
            assert status == 200 and sha(body) == a["digest"], (j["id"], a["name"])
            blobs[a["digest"]] = hashlib.sha256(body).hexdigest()
    return models, jobs, blobs


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An embedded install with real content, stopped: resnet18 (a job run
    to success on it), a small model with its spec and a calibration (a
    calibrated job to success, a job failed), a sharded model with a profile, an
    admin token, and a job left running by a daemon killed with SIGKILL.
    (data dir, token, its snapshot taken before that job was submitted,
    that job's id)."""
    root = tmp_path_factory.mktemp("source")
    d = Daemon(root / "var", ARGS, env=EMBEDDED).start()
    try:
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        status, r18 = d.upload(buf.getvalue(), name="resnet18")
        assert status == 201, r18
        d.json("PUT", "/v1/models/%s/spec" % r18["id"], conv_spec(net), expect=200)
        status, j1 = d.json("POST", "/v1/jobs", {"model": r18["id"], "policy": FIXED})
        assert status == 201, j1

        torch.manual_seed(1)
        head = Head()
        buf = io.BytesIO()
        torch.save(head.state_dict(), buf)
        status, hm = d.upload(buf.getvalue(), name="head")
        assert status == 201, hm
        d.json("PUT", "/v1/models/%s/spec" % hm["id"], head_spec(), expect=200)
        status, _, body = d.request("PUT", "/v1/models/%s/calibration" % hm["id"],
                                    body=calibration_bytes(head_grams()),
                                    headers={"Content-Type": "application/octet-stream"})
        assert status == 200, body
        status, j2 = d.json("POST", "/v1/jobs", {"model": hm["id"], "policy": FIXED,
                                                  "calibration": True})
        assert status == 201, j2

        ts, spec = small_model()
        shards, index = split(ts, 3)
        sm = upload_checkpoint(d, shards, index)
        d.json("PUT", "/v1/models/%s/spec" % sm["id"], spec, expect=200)
        status, _, body = d.request("PUT", "/v1/models/%s/profile" % sm["id"],
                                    body=json.dumps(latency_profile(spec)).encode(),
                                    headers={"Content-Type": "application/json"})
        assert status == 200, body
        status, j3 = d.json("POST", "/v1/jobs", {"model": sm["id"], "policy": FIXED})
        assert status == 201, j3
        for j in (j1, j2, j3):
            assert d.wait_job(j["id"], timeout=600)["state"] == "succeeded"

        # a failed job: its outputs cannot be written (test_retry's way)
        tmp = os.path.join(d.data_dir, "tmp")
        os.rename(tmp, tmp + ".away")
        with open(tmp, "wb") as f:
            f.write(b"not a folder")
        status, j4 = d.json("POST", "/v1/jobs", {"model": hm["id"],
                                                  "policy": dict(FIXED, rank=2)})
        assert status == 201, j4
        assert d.wait_job(j4["id"])["state"] == "failed"
        os.unlink(tmp)
        os.rename(tmp + ".away", tmp)

        token = d.run_cli("token", "create", "--role", "admin", "--name", "ci").stdout.strip()
        snap = snapshot(d, token)
        # a job the source was running when it died
        status, j5 = d.json("POST", "/v1/jobs", {"model": r18["id"],
                                                  "policy": dict(FIXED, rank=3)},
                            token=token)
        assert status == 201, j5
        d.wait_job(j5["id"], states=("running",), token=token)
        d.kill9()
    finally:
        if d.proc is not None:
            d.stop()
    db = sqlite3.connect(os.path.join(root / "var", "decompd.db"))
    assert db.execute("SELECT state FROM jobs WHERE id=?", (j5["id"],)).fetchall() == \
        [("running",)]
    db.close()
    return str(root / "var"), token, snap, j5["id"]


def copy_of(source, tmp_path, name="src"):
    dst = str(tmp_path / name)
    shutil.copytree(source[0], dst)
    return dst


def migrate(src, dest, *extra, check=None):
    """Run decompd store migrate from `src` into the Daemon `dest`'s
    settings (its data dir, its database)."""
    cmd = [BIN, "store", "migrate", "--from", src, "--data-dir", dest.data_dir,
           "--index", dest.env["DECOMPD_INDEX"]] + list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True, env=dest.env, timeout=600)
    if check is not None:
        assert (r.returncode == 0) == check, r.stderr[-3000:]
    return r


def dest_of(tmp_path, name="dest"):
    return Daemon(tmp_path / name, ARGS, env=ENV)


def rows(d):
    """The destination's index, every table a migration writes, in a
    comparable form (the queue's own numbering left out)."""
    return {
        "models": index_sql(d, "SELECT id, digest, name, format, size, tensors, created_at, "
                               "spec, archive_spec, calibration, calibration_layers, "
                               "calibration_size, profile, profile_layers, profile_size "
                               "FROM models ORDER BY id"),
        "shards": index_sql(d, "SELECT * FROM model_shards ORDER BY model_id, idx"),
        "jobs": index_sql(d, "SELECT id, model_id, request_key, spec, policy, state, "
                             "cancel_requested, attempts, layers_total, layers_done, "
                             "error_code, error_message, created_at, started_at, "
                             "finished_at, calibration, profile, shard_bytes, "
                             "peak_rss_bytes FROM jobs ORDER BY seq"),
        "layers": index_sql(d, "SELECT * FROM job_layers ORDER BY job_id, idx"),
        "artifacts": index_sql(d, "SELECT * FROM artifacts ORDER BY job_id, name"),
        "tokens": index_sql(d, "SELECT * FROM tokens ORDER BY id"),
    }


def blob_files(d):
    out = {}
    top = os.path.join(d.data_dir, "blobs")
    for root, _, files in os.walk(top):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), top)] = \
                    hashlib.sha256(fh.read()).hexdigest()
    return out


def test_every_model_job_artifact_attachment_and_token_is_in_postgresql_with_the_same_ids(
        source, tmp_path):
    src, token, (models, jobs, blobs), queued = source
    dest = dest_of(tmp_path)
    t0 = time.monotonic()
    r = migrate(copy_of(source, tmp_path), dest, check=True)
    took = time.monotonic() - t0
    assert "everything is in postgresql" in r.stderr, r.stderr
    # a line per row and blob handled, then the summary with the totals
    lines = r.stderr.splitlines()
    progress = [l for l in lines if l.startswith("decompd: migrate: models")]
    n = len(models) + len(jobs) + 1 + 1  # + the running job, + the token
    assert len(progress) >= n, lines
    done = [l for l in lines if l.startswith("decompd: migrate: done: ")]
    assert len(done) == 1, lines
    assert "models %d/%d, jobs %d/%d, tokens 1/1" % (len(models), len(models),
                                                     len(jobs) + 1, len(jobs) + 1) in done[0]
    m = re.search(r"blobs (\d+)/(\d+) \((\d+) copied, 0 there already\)", done[0])
    assert m and m.group(1) == m.group(2) == m.group(3) and int(m.group(1)) >= len(blobs), done
    print("\nmigrated the test install in %.1f s:\n%s" % (took, "\n".join(lines[-2:])))
    d = dest.start()
    try:
        # the old token authenticates; nothing gets in without one
        assert d.request("GET", "/v1/models")[0] == 401
        got_models, got_jobs, got_blobs = snapshot(d, token)
        assert got_models == models
        assert {i: j for i, j in got_jobs.items() if i != queued} == jobs
        assert got_blobs == blobs
        kinds = {m["format"] for m in got_models.values()}
        assert "safetensors-sharded" in kinds, kinds
        states = sorted(j["state"] for j in jobs.values())
        assert states == ["failed", "succeeded", "succeeded", "succeeded"], states
        assert any(m.get("calibration") for m in got_models.values())
        assert any(m.get("profile") for m in got_models.values())
        assert any(j.get("calibration") for j in got_jobs.values())
        # the job the source was running is queued here, and runs
        assert got_jobs[queued]["state"] in ("queued", "running", "succeeded")
        done = d.wait_job(queued, token=token, timeout=600)
        assert done["state"] == "succeeded", done
        # a retried failed job runs again here (its model and spec came along)
        failed = [i for i, j in jobs.items() if j["state"] == "failed"][0]
        d.json("POST", "/v1/jobs/%s/retry" % failed, token=token, expect=200)
        assert d.wait_job(failed, token=token)["state"] == "succeeded"
    finally:
        d.stop()


def test_migrating_twice_copies_nothing_and_writes_no_row_the_second_time(source, tmp_path):
    dest = dest_of(tmp_path)
    src = copy_of(source, tmp_path)
    migrate(src, dest, check=True)
    before, files = rows(dest), blob_files(dest)
    r = migrate(src, dest, check=True)
    assert "(0 copied," in r.stderr and "new: 0 models, 0 jobs, 0 tokens" in r.stderr, r.stderr
    assert rows(dest) == before and blob_files(dest) == files


def test_a_migration_killed_with_sigkill_midway_then_rerun_ends_as_one_uninterrupted_run(
        source, tmp_path):
    src = copy_of(source, tmp_path)
    whole = dest_of(tmp_path, "whole")
    migrate(src, whole, check=True)
    want_rows, want_files = rows(whole), blob_files(whole)

    cut = dest_of(tmp_path, "cut")
    kills = 0
    for after in (1, 4, 9):  # progress lines read before each kill
        cmd = [BIN, "store", "migrate", "--from", src, "--data-dir", cut.data_dir,
               "--index", cut.env["DECOMPD_INDEX"]]
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=cut.env)
        seen = 0
        for line in p.stderr:
            if "migrate:" in line:
                seen += 1
            if seen >= after:
                p.send_signal(signal.SIGKILL)
                break
        p.wait()
        p.stderr.close()
        kills += p.returncode == -signal.SIGKILL
    assert kills >= 1  # at least one run was cut short
    partial = rows(cut)
    assert partial != want_rows  # the first cut left work undone
    migrate(src, cut, check=True)
    assert rows(cut) == want_rows
    assert blob_files(cut) == want_files


def test_a_source_blob_whose_bytes_are_not_its_digest_stops_the_migration_naming_it(
        source, tmp_path):
    src = copy_of(source, tmp_path)
    models = source[2][0]
    head = [m for m in models.values() if m["name"] == "head"][0]
    digest = head["calibration"]["digest"]
    hexd = digest.split(":")[1]
    path = os.path.join(src, "blobs", "sha256", hexd[:2], hexd)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(bytes(data))
    dest = dest_of(tmp_path)
    r = migrate(src, dest, check=False)
    assert r.returncode != 0
    assert digest in r.stderr and head["id"] in r.stderr, r.stderr
    assert "calibration" in r.stderr and "damaged" in r.stderr, r.stderr
    # nothing of that model was written
    assert index_sql(dest, "SELECT id FROM models WHERE id=?", (head["id"],)) == []
    assert "everything is in" not in r.stderr


def test_refusals_name_what_is_wrong(source, tmp_path):
    dest = dest_of(tmp_path)
    r = migrate(str(tmp_path / "nowhere"), dest, check=False)
    assert r.returncode != 0 and "nowhere" in r.stderr, r.stderr
    os.makedirs(tmp_path / "empty")
    r = migrate(str(tmp_path / "empty"), dest, check=False)
    assert r.returncode != 0 and "not an embedded decompd store" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "empty" / "decompd.db")
    # a source a daemon serves
    src = copy_of(source, tmp_path)
    served = Daemon(src, ARGS, env=EMBEDDED).start()
    try:
        r = migrate(src, dest, check=False)
        assert r.returncode != 0 and "a decompd serves it" in r.stderr, r.stderr
    finally:
        served.stop()
    # the destination is the source
    r = subprocess.run([BIN, "store", "migrate", "--from", src, "--data-dir", src,
                        "--index", "sqlite"], capture_output=True, text=True,
                       env=dest.env, timeout=60)
    assert r.returncode != 0 and "the destination is the source" in r.stderr, r.stderr
    # a PostgreSQL server that does not answer
    port = free_port()
    r = subprocess.run([BIN, "store", "migrate", "--from", src, "--data-dir",
                        str(tmp_path / "d2"), "--index",
                        "postgresql://decompd@127.0.0.1:%d/x" % port],
                       capture_output=True, text=True, env=dest.env, timeout=120)
    assert r.returncode != 0 and "127.0.0.1:%d" % port in r.stderr, r.stderr


def test_an_embedded_destination_in_another_data_dir_gets_everything_too(source, tmp_path):
    """The embedded backend's import entries: the same copy into SQLite."""
    src, token, (models, jobs, blobs), queued = source
    dest = Daemon(tmp_path / "dest", ARGS, env=EMBEDDED)
    r = migrate(copy_of(source, tmp_path), dest, check=True)
    assert "everything is in sqlite" in r.stderr, r.stderr
    again = migrate(copy_of(source, tmp_path, "src2"), dest, check=True)
    assert "new: 0 models, 0 jobs, 0 tokens" in again.stderr, again.stderr
    db = sqlite3.connect(os.path.join(dest.data_dir, "decompd.db"))
    assert db.execute("SELECT state FROM jobs WHERE id=?", (queued,)).fetchall() == \
        [("queued",)]
    db.close()
    d = dest.start()
    try:
        got_models, got_jobs, got_blobs = snapshot(d, token)
        assert got_models == models
        assert {i: j for i, j in got_jobs.items() if i != queued} == jobs
        assert got_blobs == blobs
    finally:
        d.stop()


def test_a_destination_holding_the_same_weights_under_another_id_is_refused_naming_both(
        source, tmp_path):
    """Ids must stay what they were: a cluster where the same weights were
    uploaded already (another model id) cannot take the source's model, and
    says so instead of renaming it."""
    models = source[2][0]
    head = [m for m in models.values() if m["name"] == "head"][0]
    dest = dest_of(tmp_path)
    d = dest.start()
    try:
        src = copy_of(source, tmp_path)
        hexd = head["digest"].split(":")[1]
        with open(os.path.join(src, "blobs", "sha256", hexd[:2], hexd), "rb") as f:
            status, other = d.upload(f.read(), name="head-again")
        assert status == 201 and other["id"] != head["id"], other
    finally:
        d.stop()
    r = migrate(src, dest, check=False)
    assert r.returncode != 0
    assert head["id"] in r.stderr and head["digest"] in r.stderr, r.stderr
    assert "another model has its digest" in r.stderr, r.stderr
    assert index_sql(dest, "SELECT id FROM models WHERE id=?", (head["id"],)) == []


def test_a_source_whose_blobs_live_elsewhere_is_read_through_from_blobs(source, tmp_path):
    """--from-blobs is the source's own `blobs` setting; without it, the
    blobs are looked for in the source's data dir, and a missing one stops
    the migration naming it and what names it."""
    src = copy_of(source, tmp_path)
    elsewhere = str(tmp_path / "elsewhere")
    os.rename(os.path.join(src, "blobs", "sha256"), elsewhere + "-sha256")
    os.makedirs(elsewhere)
    os.rename(elsewhere + "-sha256", os.path.join(elsewhere, "sha256"))
    dest = dest_of(tmp_path)
    r = migrate(src, dest, check=False)
    assert r.returncode != 0
    assert "cannot read it from the source" in r.stderr and "model m_" in r.stderr, r.stderr
    r = migrate(src, dest, "--from-blobs", "file:" + elsewhere, check=True)
    assert "everything is in postgresql" in r.stderr, r.stderr
