"""POST /v1/jobs/{id}/retry: a failed or cancelled job, which an identical
resubmit only returns as it is, goes back to the queue as a new attempt
(behind the jobs queued now, attempts counted) and runs; a queued job is
left as it is; a succeeded job, one being cancelled and one whose model was
deleted are conflicts."""
import io
import os
import time

import torch

from conftest import assert_problem, conv_spec


def model(seed, cin=16, cout=32):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


class BrokenTmp:
    """DATA_DIR/tmp, where a job writes its outputs, replaced by a file (a
    disk or node going bad, for the test's purpose) until restore(): jobs
    fail saving their outputs with io_error."""

    def __init__(self, d):
        self.tmp = os.path.join(d.data_dir, "tmp")
        os.rename(self.tmp, self.tmp + ".away")
        with open(self.tmp, "wb") as f:
            f.write(b"not a folder")

    def restore(self):
        os.unlink(self.tmp)
        os.rename(self.tmp + ".away", self.tmp)


def test_a_failed_job_runs_again_when_retried_not_when_resubmitted(daemon):
    net, data = model(1)
    status, m = daemon.upload(data)
    assert status == 201, m
    broken = BrokenTmp(daemon)
    req = {"model": m["id"], "spec": conv_spec(net), "policy": "budget"}
    status, j = daemon.json("POST", "/v1/jobs", req)
    assert status == 201, j
    failed = daemon.wait_job(j["id"])
    assert failed["state"] == "failed" and failed["error"]["code"] == "io_error", failed
    assert daemon.data_dir not in failed["error"]["message"], failed
    assert failed["attempts"] == 1
    broken.restore()
    # the same input again is the same (failed) job: nothing runs
    status, again = daemon.json("POST", "/v1/jobs", req)
    assert status == 200 and again["id"] == j["id"] and again["state"] == "failed", again
    status, r = daemon.json("POST", "/v1/jobs/%s/retry" % j["id"])
    assert status == 200, r
    assert r["state"] in ("queued", "running"), r
    assert r["error"] is None and r["finished_at"] is None, r
    done = daemon.wait_job(j["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["error"] is None and len(done["artifacts"]) == 3, done
    assert [l["name"] for l in done["layers"]] == ["0"]
    assert daemon.request("GET", "/v1/jobs/%s/artifacts/decompose_info.json" % j["id"])[0] == 200
    # a succeeded job has nothing to retry
    status, hdrs, body = daemon.request("POST", "/v1/jobs/%s/retry" % j["id"])
    doc = assert_problem(status, hdrs, body, 409, "conflict")
    assert "succeeded" in doc["detail"], doc
    status, hdrs, body = daemon.request("POST", "/v1/jobs/j_0000000000000000/retry")
    assert_problem(status, hdrs, body, 404, "not_found")


def test_a_job_whose_model_was_deleted_cannot_be_retried(daemon):
    net, data = model(2)
    status, m = daemon.upload(data)
    assert status == 201, m
    broken = BrokenTmp(daemon)
    status, j = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net)})
    assert status == 201, j
    assert daemon.wait_job(j["id"])["state"] == "failed"
    broken.restore()
    assert daemon.request("DELETE", "/v1/models/" + m["id"])[0] == 204
    status, hdrs, body = daemon.request("POST", "/v1/jobs/%s/retry" % j["id"])
    doc = assert_problem(status, hdrs, body, 409, "conflict")
    assert "deleted" in doc["detail"], doc
    assert daemon.json("GET", "/v1/jobs/" + j["id"], expect=200)[1]["state"] == "failed"


def wait_state(d, job_id, state, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = d.json("GET", "/v1/jobs/" + job_id, expect=200)[1]
        if j["state"] == state:
            return j
        time.sleep(0.05)
    raise AssertionError("job %s never %s: %s" % (job_id, state, j))


def test_retry_of_queued_cancelled_and_cancelling_jobs(daemon_factory):
    """One worker, busy with one long layer: a queued job is left as it is;
    once cancelled it goes back to the queue behind the jobs queued since,
    and runs; the long job, while its cancellation is under way, is a
    conflict."""
    d = daemon_factory(args=["--workers", "1"]).start()
    big, data = model(3, 1024, 1024)
    status, mb = d.upload(data)
    assert status == 201, mb
    status, long_job = d.json("POST", "/v1/jobs", {"model": mb["id"], "spec": conv_spec(big),
                                                    "policy": "amct"})
    assert status == 201, long_job
    wait_state(d, long_job["id"], "running")
    jobs = []
    for seed in (4, 5):
        net, data = model(seed)
        status, m = d.upload(data)
        assert status == 201, m
        status, j = d.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net)})
        assert status == 201 and j["state"] == "queued", j
        jobs.append(j["id"])
    q, later = jobs
    # queued: it is going to run; left as it is
    status, r = d.json("POST", "/v1/jobs/%s/retry" % q)
    assert status == 200 and r["state"] == "queued", r
    assert [x["id"] for x in d.json("GET", "/v1/jobs", expect=200)[1]["jobs"]][:2] == [later, q]
    status, c = d.json("POST", "/v1/jobs/%s/cancel" % q)
    assert status == 200 and c["state"] == "cancelled", c
    status, r = d.json("POST", "/v1/jobs/%s/retry" % q)
    assert status == 200 and r["state"] == "queued" and not r["cancel_requested"], r
    # back of the queue: now listed (and claimed) after `later`
    assert [x["id"] for x in d.json("GET", "/v1/jobs", expect=200)[1]["jobs"]][:2] == [q, later]
    # the long job, being cancelled: not yet
    status, c = d.json("POST", "/v1/jobs/%s/cancel" % long_job["id"])
    assert status in (200, 202), c
    status, hdrs, body = d.request("POST", "/v1/jobs/%s/retry" % long_job["id"])
    if status == 409:
        assert "being cancelled" in assert_problem(status, hdrs, body, 409, "conflict")["detail"]
    else:  # it had stopped already: retried, so cancel it again
        assert status == 200, body
        d.json("POST", "/v1/jobs/%s/cancel" % long_job["id"])
    assert d.wait_job(long_job["id"])["state"] == "cancelled"
    first = d.wait_job(later)
    second = d.wait_job(q)
    assert first["state"] == second["state"] == "succeeded", (first, second)
    assert first["started_at"] <= second["started_at"], (first, second)
    assert second["attempts"] == 1  # cancelled while queued: never started before
