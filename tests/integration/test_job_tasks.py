"""GET /v1/jobs/{id}/tasks: the tasks a job was spread over and which node
ran each. On a PostgreSQL index (suite integration-pg) a resnet18 job is spread
(its layers are worth it): spectra tasks, one plan, factors tasks, all run here; the embedded store
runs each job whole and answers an empty list. Either way an unknown job is
a 404 and the list needs a read token once tokens exist."""
import io
import os

import torch
import yaml

from conftest import SOURCE_DIR, TEST_INDEX, assert_problem, conv_spec, resnet18_upload

STAGES = ["spectra", "plan", "factors"]


def task_fields():
    """The Task schema's properties in api/openapi.yaml."""
    with open(os.path.join(SOURCE_DIR, "api", "openapi.yaml")) as f:
        doc = yaml.safe_load(f)
    return set(doc["components"]["schemas"]["Task"]["properties"])


def resnet18_job(d):
    """A finished budget job on torchvision's resnet18 (20 convs)."""
    model, m = resnet18_upload(d)
    status, job = d.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(model),
                                               "policy": "budget"})
    assert status == 201, job
    done = d.wait_job(job["id"], timeout=600)
    assert done["state"] == "succeeded", done
    return done


def check_spread(job, tasks, node):
    """The tasks of a finished spread job: all done here, stage by stage,
    each stage's indexes 0.., one plan with no layers, every layer of the
    job in one spectra task and each decomposed one in one factors task."""
    assert [t["stage"] for t in tasks] == sorted((t["stage"] for t in tasks),
                                                 key=STAGES.index), tasks
    for stage in STAGES:
        indexes = [t["index"] for t in tasks if t["stage"] == stage]
        assert indexes == list(range(len(indexes))), (stage, indexes)
    (plan,) = [t for t in tasks if t["stage"] == "plan"]
    assert plan["layers"] == [], plan
    for t in tasks:
        assert t["state"] == "done" and t["error"] is None, t
        assert t["node"] == node, t
        assert t["attempts"] >= 1 and t["cost"] >= 0, t
        assert t["started_at"] and t["finished_at"], t
        assert t["started_at"] <= t["finished_at"], t
    spectra = [n for t in tasks if t["stage"] == "spectra" for n in t["layers"]]
    factors = [n for t in tasks if t["stage"] == "factors" for n in t["layers"]]
    names = [l["name"] for l in job["layers"]]
    assert sorted(spectra) == sorted(names)
    decomposed = [l["name"] for l in job["layers"] if l["rank"] > 0]
    assert decomposed, "budget decomposed nothing"
    assert sorted(factors) == sorted(decomposed)
    assert all(t["cost"] > 0 for t in tasks if t["stage"] != "plan"), tasks


def test_a_finished_jobs_tasks_name_the_node_that_ran_each(daemon_factory):
    d = daemon_factory(args=("--node-id", "node-t", "--workers", "2")).start()
    job = resnet18_job(d)
    status, body = d.json("GET", "/v1/jobs/%s/tasks" % job["id"])
    assert status == 200, body
    assert set(body) == {"tasks"}
    tasks = body["tasks"]
    if not TEST_INDEX:  # the embedded store runs a job whole
        assert tasks == []
        return
    assert len(tasks) >= 3, tasks
    # what the API shows of a task is the schema's, no more (its record's
    # digest stays inside)
    for t in tasks:
        assert set(t) == task_fields(), t
    check_spread(job, tasks, "node-t")
    # the rows name who ran what until the job is deleted
    assert d.json("DELETE", "/v1/jobs/" + job["id"])[0] == 204
    assert_problem(*d.request("GET", "/v1/jobs/%s/tasks" % job["id"]), 404, "not_found")


def test_an_unknown_jobs_tasks_are_not_found(daemon):
    assert_problem(*daemon.request("GET", "/v1/jobs/j_0000000000000000/tasks"),
                   404, "not_found")


def test_tasks_need_a_read_token_once_tokens_exist(daemon):
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.Conv2d(16, 16, 3))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    status, m = daemon.upload(buf.getvalue())
    assert status == 201, m
    status, job = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net)})
    assert status == 201, job
    read = daemon.run_cli("token", "create", "--role", "read", "--name", "r").stdout.strip()
    path = "/v1/jobs/%s/tasks" % job["id"]
    assert_problem(*daemon.request("GET", path), 401, "unauthorized")
    assert_problem(*daemon.request("GET", path, token="dcp_" + "0" * 64), 401, "unauthorized")
    status, body = daemon.json("GET", path, token=read)
    assert status == 200 and isinstance(body["tasks"], list), body
    daemon.wait_job(job["id"], token=read)  # not stopped mid-job
