"""Retrying a failed job from the clients: decompctl retry (libdecompclient's
decomp_client_job_retry) and decompd.client.Client.retry put a failed job
back in the queue, where an identical resubmit only returns it; the retried
job then succeeds as its second attempt. A succeeded job is a conflict for
both; offline, Python makes no request."""
import json
import os

import pytest

from conftest import SmallNet, client_env, ctl, url_of


class BrokenTmp:
    """DATA_DIR/tmp, where a job writes its outputs, replaced by a file (a
    node going bad, for the test's purpose) until restore(): jobs fail
    saving their outputs."""

    def __init__(self, d):
        self.tmp = os.path.join(d.data_dir, "tmp")
        os.rename(self.tmp, self.tmp + ".away")
        with open(self.tmp, "wb") as f:
            f.write(b"not a folder")

    def restore(self):
        os.unlink(self.tmp)
        os.rename(self.tmp + ".away", self.tmp)


def failed_job(daemon, env, w, s):
    """Upload `w`, then make its job fail (outputs cannot be saved); the
    job id and the BrokenTmp to restore."""
    r = ctl("upload", w, env=env)
    assert r.returncode == 0, r.stderr
    model = r.stdout.strip()
    broken = BrokenTmp(daemon)
    r = ctl("submit", model, "--spec", s, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), broken


def test_decompctl_retry_runs_a_failed_job_again(daemon, tmp_path):
    w, s = SmallNet.write(tmp_path)
    env = client_env(daemon, tmp_path / "cache")
    job, broken = failed_job(daemon, env, w, s)
    r = ctl("wait", job, "--timeout", "120", env=env)
    assert r.returncode == 9 and "failed" in r.stdout, (r.stdout, r.stderr)
    broken.restore()
    # the same input again is the same failed job
    r = ctl("submit", w, "--spec", s, env=env)
    assert r.returncode == 0 and r.stdout.strip() == job, r.stderr
    r = ctl("retry", job, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(job + " queued ") or r.stdout.startswith(job + " running "), \
        r.stdout
    r = ctl("wait", job, "--timeout", "120", "--json", env=env)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    # nothing to retry once it succeeded: the server's conflict, as JSON too
    r = ctl("retry", job, "--json", env=env)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert json.loads(r.stdout)["error"]["code"] == "conflict", r.stdout
    r = ctl("retry", "j_0000000000000000", env=env)
    assert r.returncode == 8 and "not_found" in r.stderr, r.stderr
    r = ctl("retry", env=env)
    assert r.returncode == 2


def test_python_client_retry_runs_a_failed_job_again(daemon, tmp_path):
    from decompd.client import Client, ConflictError, JobFailedError, OfflineMissError
    w, s = SmallNet.write(tmp_path, seed=1)
    c = Client(url_of(daemon), cache=str(tmp_path / "cache"))
    job, broken = failed_job(daemon, client_env(daemon, tmp_path / "c2"), w, s)
    with pytest.raises(JobFailedError) as e:
        c.wait(job, progress=False)
    assert e.value.job.state == "failed"
    broken.restore()
    assert c.submit(w, spec=open(s).read()).id == job  # idempotent: same job
    again = c.retry(job)
    assert again.id == job and again.state in ("queued", "running"), again
    assert again.error is None
    done = c.wait(job, progress=False)
    assert done.state == "succeeded" and done.doc["attempts"] == 2, done.doc
    with pytest.raises(ConflictError):
        c.retry(job)
    with pytest.raises(OfflineMissError):
        Client(url_of(daemon), cache=str(tmp_path / "cache"), offline=True).retry(job)
