"""decompd store migrate into a cluster's store: the index in PostgreSQL
(pg_server.py, DECOMPD_TEST_INDEX) and the blobs in an S3-compatible
object store (s3rver behind the SigV4 checker, test_s3.py's fixture).

The source is test_migrate.py's embedded install (resnet18 with a job, a
calibrated model, a sharded model with a profile, a failed job, a token, a
job left queued)."""
import hashlib
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from conftest import TEST_INDEX, Daemon  # noqa: E402
from test_daemon_s3 import PREFIX, objects, s3_args  # noqa: E402
from test_migrate import (ARGS, ENV, copy_of, migrate, rows,  # noqa: E402,F401
                          snapshot, source)
from test_s3 import s3rver  # noqa: E402,F401

pytestmark = pytest.mark.skipif(not TEST_INDEX, reason="needs pg_server.py "
                                "(DECOMPD_TEST_INDEX): the destination is PostgreSQL")


def test_an_embedded_install_moves_into_postgresql_and_s3_with_every_blob_an_object_and_the_same_ids(
        source, tmp_path, s3rver):
    src, token, (models, jobs, blobs), queued = source
    dest = Daemon(tmp_path / "dest", ARGS + s3_args(s3rver), env=ENV)
    src = copy_of(source, tmp_path)
    r = migrate(src, dest, *s3_args(s3rver), check=True)
    assert "everything is in postgresql (s3://" in r.stderr, r.stderr
    # every blob the rows name is an object named by its digest, whose
    # bytes are that digest
    stored = objects(s3rver)
    for key, body in stored.items():
        assert key.startswith(PREFIX + "/sha256/")
        assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1]
    assert set(blobs) <= {"sha256:" + k.rsplit("/", 1)[1] for k in stored}

    # a second run finds every blob there (in the object store) and writes nothing
    before = rows(dest)
    again = migrate(src, dest, *s3_args(s3rver), check=True)
    assert "(0 copied," in again.stderr and "new: 0 models, 0 jobs, 0 tokens" in again.stderr, \
        again.stderr
    assert rows(dest) == before

    # a node with none of the blobs in its own folder serves them all from
    # the object store, under the same ids, to the same token
    shutil.rmtree(os.path.join(dest.data_dir, "blobs"), ignore_errors=True)
    d = dest.start()
    try:
        got_models, got_jobs, got_blobs = snapshot(d, token)
        assert got_models == models
        assert {i: j for i, j in got_jobs.items() if i != queued} == jobs
        assert got_blobs == blobs
        assert got_jobs[queued]["state"] in ("queued", "running", "succeeded")
    finally:
        d.stop()
