"""Requests that race on one resource end in one consistent state: deleting
a model and submitting a job on it never both succeed with the job then
failing for want of its model."""
import collections
import io
import json
import threading

import torch

from conftest import conv_spec

TRIES = 300  # the race was lost about 1 try in 30 before the fix


def model_bytes(seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def race(daemon, requests):
    """Send each (method, path, body) on its own connection at the same
    moment (connected first, released by a barrier); their statuses and
    bodies, in order."""
    barrier = threading.Barrier(len(requests))
    out = [None] * len(requests)

    def run(i, method, path, body):
        c = daemon.conn(60)
        try:
            c.connect()
            data = json.dumps(body).encode() if body is not None else None
            hdrs = {"Content-Type": "application/json"} if data else {}
            barrier.wait(30)
            c.request(method, path, body=data, headers=hdrs)
            r = c.getresponse()
            out[i] = (r.status, r.read())
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,) + rq) for i, rq in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None for o in out), out
    return out


def test_delete_model_racing_a_job_submit_on_it_never_leaves_an_orphan_job(daemon_factory):
    d = daemon_factory(args=["--workers", "1", "--blas-threads", "1"]).start()
    seen = collections.Counter()
    accepted = []
    for i in range(TRIES):
        net, data = model_bytes(1000 + i)
        status, m = d.upload(data)
        assert status == 201, m
        (ds, db), (js, jb) = race(d, [
            ("DELETE", "/v1/models/" + m["id"], None),
            ("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net)})])
        seen[(ds, js)] += 1
        # Either the delete won (the submit finds no model) or the submit
        # did (the delete finds a queued or running job on the model).
        assert (ds, js) in ((204, 404), (409, 201), (204, 201)), (ds, db, js, jb)
        if js == 201:
            accepted.append(json.loads(jb)["id"])
        if (ds, js) == (204, 201):
            # Only when the job had already run to its end before the
            # delete looked (a loaded machine): it must have succeeded.
            j = d.json("GET", "/v1/jobs/" + accepted[-1], expect=200)[1]
            assert j["state"] == "succeeded", (j, seen)
    # Every job the daemon acknowledged runs on its model.
    for job_id in accepted:
        j = d.wait_job(job_id)
        assert j["state"] == "succeeded", (j, seen)
    print("outcomes (delete, submit):", dict(seen))
