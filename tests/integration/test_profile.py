"""Latency profiles over HTTP (issue 16, the service half), against the real
daemon: a decompd.profile JSON document (built here from the model's layer
spec: per layer its time and each candidate's times over a grid of ranks)
attached with PUT /v1/models/{id}/profile is checked against the model's
spec, stored as sent, content-addressed, and served back by GET; a job
submitted with it decides per the profile (a layer whose every candidate is
slower is left alone) and its info file carries the predicted latencies.
The profile is part of a job's identity; every bad profile is a 422
bad_profile naming the layer with nothing stored; attaching needs the
submit role."""
import copy
import hashlib
import io
import json
import os

import pytest
import torch
import torch.nn as nn

from conftest import assert_problem, latency_profile

POLICY = {"name": "fixed", "rank": 4}


class Pair(nn.Module):
    """Two equal convs: the profile makes one of them slow to decompose."""

    def __init__(self):
        super().__init__()
        self.fast = nn.Conv2d(16, 16, 3, padding=1)
        self.slow = nn.Conv2d(16, 16, 3, padding=1)


def pair_spec():
    conv = {"type": "Conv2d", "in_channels": 16, "out_channels": 16,
            "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "groups": 1, "bias": True,
            "padding_mode": "zeros"}
    return {"layers": [dict(conv, name="fast"), dict(conv, name="slow")]}


def pair_profile():
    """A profile of Pair made from its spec (conftest.latency_profile):
    `fast` (10 ms) gets faster with every candidate at low rank; every
    candidate of `slow` (1 ms) is slower than the layer itself. Channel
    ranks go to min(O, I*kh*kw) = 16, spatial ones to min(I*kh, O*kw) = 48."""
    return latency_profile(pair_spec(), slow=("slow",))


def body_of(profile):
    return json.dumps(profile, indent=1).encode()


@pytest.fixture
def pair(daemon):
    """The model json of Pair uploaded, its spec attached."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(Pair().state_dict(), buf)
    status, m = daemon.upload(buf.getvalue(), name="pair")
    assert status == 201, m
    daemon.json("PUT", "/v1/models/%s/spec" % m["id"], pair_spec(), expect=200)
    return m


def blob_files(daemon):
    out = set()
    for sub in ("blobs", "tmp"):
        for root, _, files in os.walk(os.path.join(daemon.data_dir, sub)):
            out |= {os.path.join(root, f) for f in files}
    return out


def put_profile(daemon, model_id, body, token=None):
    return daemon.request("PUT", "/v1/models/%s/profile" % model_id, body=body,
                          token=token, headers={"Content-Type": "application/json"})


def attach(daemon, model_id, body):
    status, _, data = put_profile(daemon, model_id, body)
    assert status == 200, data
    return json.loads(data)


def submit(daemon, model_id, expect, **extra):
    req = {"model": model_id, "policy": POLICY}
    req.update(extra)
    return daemon.json("POST", "/v1/jobs", req, expect=expect)[1]


def info_of(daemon, job_id):
    done = daemon.wait_job(job_id)
    assert done["state"] == "succeeded", done
    status, _, data = daemon.request(
        "GET", "/v1/jobs/%s/artifacts/decompose_info.json" % job_id)
    assert status == 200, data
    return done, json.loads(data)


def test_a_profile_put_is_checked_stored_as_sent_and_served_back(daemon, pair):
    body = body_of(pair_profile())
    p = attach(daemon, pair["id"], body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert p == {"digest": digest, "layers": 2, "size": len(body),
                 "url": "/v1/models/%s/profile" % pair["id"]}
    assert daemon.json("GET", "/v1/models/" + pair["id"], expect=200)[1]["profile"] == p
    listed = daemon.json("GET", "/v1/models", expect=200)[1]["models"]
    assert [m["profile"] for m in listed] == [p]
    status, hdrs, data = daemon.request("GET", p["url"])
    assert status == 200 and data == body, (status, data[:200])
    assert hdrs["etag"] == '"%s"' % digest
    assert hdrs["content-type"].startswith("application/json")
    assert json.loads(data) == pair_profile()
    # the same body again: the same blob, attached as it was
    assert attach(daemon, pair["id"], body) == p


def test_a_job_with_a_profile_leaves_the_slow_layer_alone_and_records_latencies(
        daemon, pair):
    p = attach(daemon, pair["id"], body_of(pair_profile()))
    job = submit(daemon, pair["id"], 201, profile=True)
    assert job["profile"] == p["digest"] and job["calibration"] is None
    done, info = info_of(daemon, job["id"])
    assert done["profile"] == p["digest"]
    assert info["profile"] == {"digest": p["digest"], "device_name": "test cpu",
                               "dtype": "float32", "input_shape": [8, 16, 32, 32]}
    # `slow`: every candidate is slower than the layer, so it stays
    assert [l["name"] for l in info["layers"]] == ["fast"]
    skipped = {s["name"]: s["reason"] for s in info["skipped"]}
    assert "max_slowdown" in skipped["slow"], skipped
    assert "slow" not in info["changes"]
    fast = info["layers"][0]
    assert fast["rank"] == 4
    st = fast["stats"]
    assert st["latency_before"] == pytest.approx(0.010)
    # on the measured curve: channel 1 ms at rank 1, 4 ms at rank 8
    want_after = {"channel_svd": 0.001 + 3 / 7 * 0.003,
                  "spatial_svd": 0.002 + 3 / 23 * 0.004}[fast["method"]]
    assert st["latency_after"] == pytest.approx(want_after)
    assert info["summary"]["latency_before"] == pytest.approx(0.011)
    assert info["summary"]["latency_after"] == pytest.approx(want_after + 0.001)

    # Without the profile the same policy decomposes both: the profile chose.
    plain = submit(daemon, pair["id"], 201)
    assert plain["id"] != job["id"] and plain["profile"] is None
    _, pinfo = info_of(daemon, plain["id"])
    assert sorted(l["name"] for l in pinfo["layers"]) == ["fast", "slow"]
    assert "profile" not in pinfo
    assert "latency_before" not in pinfo["summary"]


def test_a_latency_budget_meets_its_target_on_the_profile(daemon, pair):
    attach(daemon, pair["id"], body_of(pair_profile()))
    policy = {"name": "budget", "latency_reduction": 2.0, "max_layer_error": 1}
    job = submit(daemon, pair["id"], 201, profile=True, policy=policy)
    _, info = info_of(daemon, job["id"])
    s = info["summary"]
    assert s["latency_before"] / s["latency_after"] >= 2.0, s
    assert [l["name"] for l in info["layers"]] == ["fast"]
    # without a profile there is nothing to aim at: refused before queueing
    status, hdrs, data = daemon.request(
        "POST", "/v1/jobs", {"model": pair["id"], "policy": policy})
    doc = assert_problem(status, hdrs, data, 400, "bad_policy")
    assert "profile" in doc["detail"]


def test_the_profile_is_part_of_the_jobs_identity(daemon, pair):
    p = attach(daemon, pair["id"], body_of(pair_profile()))
    plain = submit(daemon, pair["id"], 201)
    with_true = submit(daemon, pair["id"], 201, profile=True)
    assert with_true["id"] != plain["id"]
    # the same input again, by true or by digest: the same job
    assert submit(daemon, pair["id"], 200, profile=True)["id"] == with_true["id"]
    assert submit(daemon, pair["id"], 200, profile=p["digest"])["id"] == with_true["id"]
    assert submit(daemon, pair["id"], 200, profile=False)["id"] == plain["id"]
    assert submit(daemon, pair["id"], 200)["id"] == plain["id"]
    # another profile is another job
    other = pair_profile()
    other["layers"]["fast"]["time"] = 0.02
    q = attach(daemon, pair["id"], body_of(other))
    assert q["digest"] != p["digest"]
    third = submit(daemon, pair["id"], 201, profile=True)
    assert third["profile"] == q["digest"]
    assert len({plain["id"], with_true["id"], third["id"]}) == 3
    for j in (plain, with_true, third):
        daemon.wait_job(j["id"])


def _drop(path):
    """An edit removing profile[path...]."""
    def edit(p):
        node = p
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        return p
    return edit


def _set(path, value):
    def edit(p):
        node = p
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return p
    return edit


def _another_models(p):
    p["layers"]["layer1.0.conv1"] = p["layers"].pop("slow")
    return p


BAD = {
    "another model's layer": (_another_models, "layer layer1.0.conv1"),
    "another shape": (_set(["layers", "slow", "weight_shape"], [32, 16, 3, 3]),
                      "layer slow"),
    "negative time": (_set(["layers", "fast", "time"], -0.5), "layer fast"),
    "negative candidate time": (
        _set(["layers", "slow", "candidates", 0, "times"], [0.002, -1, 0.009]),
        "layer slow"),
    "empty grid": (_set(["layers", "fast", "candidates"], []), "layer fast"),
    "empty ranks": (_set(["layers", "slow", "candidates", 1, "ranks"], []),
                    "layer slow"),
    "rank over the largest": (
        _set(["layers", "fast", "candidates", 0, "ranks"], [1, 8, 17]),
        "layer fast"),
    "a Linear's method on a conv": (
        _set(["layers", "fast", "candidates", 0, "method"], "svd"), "layer fast"),
    "not a profile": (_set(["format"], "decompd.calibration"), "not a decompd profile"),
    "no layers": (_set(["layers"], {}), "layers"),
    "no time": (_drop(["layers", "slow", "time"]), "layer slow"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_profile_is_422_naming_the_layer_and_nothing_is_stored(
        daemon, pair, case):
    edit, needle = BAD[case]
    before = blob_files(daemon)
    status, hdrs, data = put_profile(daemon, pair["id"],
                                     body_of(edit(copy.deepcopy(pair_profile()))))
    doc = assert_problem(status, hdrs, data, 422, "bad_profile")
    assert needle in doc["detail"], doc
    assert blob_files(daemon) == before
    assert daemon.json("GET", "/v1/models/" + pair["id"], expect=200)[1]["profile"] is None


def test_what_is_not_json_is_400_and_an_empty_body_422(daemon, pair):
    before = blob_files(daemon)
    for body in (b"{\"format\": \"decompd.profile\"", b"\x00\x01 not json",
                 b'{"time": NaN}', body_of(pair_profile()) + b"\x00",
                 b'{"format": "decompd.profile\x00", "version": 1}'):
        assert_problem(*put_profile(daemon, pair["id"], body), 400, "bad_json")
    doc = assert_problem(*put_profile(daemon, pair["id"], b""), 422, "bad_profile")
    assert "empty" in doc["detail"]
    assert blob_files(daemon) == before


def test_a_model_without_a_spec_cannot_take_a_profile_yet(daemon):
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(Pair().state_dict(), buf)
    _, m = daemon.upload(buf.getvalue())
    before = blob_files(daemon)
    doc = assert_problem(*put_profile(daemon, m["id"], body_of(pair_profile())),
                         409, "conflict")
    assert "spec" in doc["detail"]
    assert blob_files(daemon) == before
    assert_problem(*put_profile(daemon, "m_0000000000000000", body_of(pair_profile())),
                   404, "not_found")


def test_a_jobs_profile_is_checked_against_the_jobs_spec_and_must_exist(daemon, pair):
    # true with none attached: 409 naming the route
    status, hdrs, data = daemon.request(
        "POST", "/v1/jobs", {"model": pair["id"], "profile": True})
    doc = assert_problem(status, hdrs, data, 409, "conflict")
    assert "/v1/models/%s/profile" % pair["id"] in doc["detail"]
    # a digest that is not attached (no such blob): 409
    status, hdrs, data = daemon.request(
        "POST", "/v1/jobs", {"model": pair["id"], "profile": "sha256:" + "0" * 64})
    assert_problem(status, hdrs, data, 409, "conflict")
    attach(daemon, pair["id"], body_of(pair_profile()))
    # the job's own spec leaves `slow` out: the profile names a layer it lacks
    spec = pair_spec()
    spec["layers"] = spec["layers"][:1]
    status, hdrs, data = daemon.request(
        "POST", "/v1/jobs", {"model": pair["id"], "spec": spec, "policy": POLICY,
                             "profile": True})
    doc = assert_problem(status, hdrs, data, 422, "bad_profile")
    assert "layer slow" in doc["detail"]
    # a digest naming a blob that is not a profile (the model's weights)
    status, hdrs, data = daemon.request(
        "POST", "/v1/jobs", {"model": pair["id"], "profile": pair["digest"]})
    assert_problem(status, hdrs, data, 422, "bad_profile")
    for bad in ("sha256:xyz", 3, {"digest": "x"}):
        status, hdrs, data = daemon.request(
            "POST", "/v1/jobs", {"model": pair["id"], "profile": bad})
        assert_problem(status, hdrs, data, 400, "bad_request")
    assert daemon.json("GET", "/v1/jobs")[1]["jobs"] == []


def test_replacing_and_deleting_keep_what_jobs_use(daemon, pair):
    first = body_of(pair_profile())
    other = pair_profile()
    other["layers"]["fast"]["time"] = 0.02
    second = body_of(other)
    a = attach(daemon, pair["id"], first)
    job = submit(daemon, pair["id"], 201, profile=a["digest"])
    b = attach(daemon, pair["id"], second)
    # a new job cannot name the replaced one; the one that did keeps it
    status, hdrs, data = daemon.request(
        "POST", "/v1/jobs", {"model": pair["id"], "policy": "budget",
                             "profile": a["digest"]})
    doc = assert_problem(status, hdrs, data, 409, "conflict")
    assert b["digest"] in doc["detail"] and "profile" in doc["detail"]
    assert submit(daemon, pair["id"], 200, profile=a["digest"])["id"] == job["id"]
    _, info = info_of(daemon, job["id"])
    assert info["profile"]["digest"] == a["digest"]

    def blob(d):
        return os.path.join(daemon.data_dir, "blobs", "sha256", d[7:9], d[7:])

    # DELETE: gone from the model, kept while a job names it
    assert daemon.request("DELETE", b["url"])[0] == 204
    assert not os.path.exists(blob(b["digest"]))  # no job used it
    assert_problem(*daemon.request("DELETE", b["url"]), 404, "not_found")
    assert_problem(*daemon.request("GET", b["url"]), 404, "not_found")
    assert daemon.json("GET", "/v1/models/" + pair["id"])[1]["profile"] is None
    assert os.path.exists(blob(a["digest"]))
    assert daemon.request("DELETE", "/v1/jobs/" + job["id"])[0] == 204
    assert not os.path.exists(blob(a["digest"]))
    # deleting the model takes its profile along
    attach(daemon, pair["id"], first)
    assert os.path.exists(blob(a["digest"]))
    assert daemon.request("DELETE", "/v1/models/" + pair["id"])[0] == 204
    assert not os.path.exists(blob(a["digest"]))


def test_a_profile_over_max_json_bytes_is_413(daemon_factory):
    d = daemon_factory(args=["--max-json-bytes", "4K"]).start()
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(Pair().state_dict(), buf)
    _, m = d.upload(buf.getvalue())
    d.json("PUT", "/v1/models/%s/spec" % m["id"], pair_spec(), expect=200)
    body = json.dumps(pair_profile(), indent=8).encode()
    body += b" " * (4097 - len(body))
    assert len(body) > 4096
    before = blob_files(d)
    assert_problem(*put_profile(d, m["id"], body), 413, "payload_too_large")
    assert blob_files(d) == before
    assert d.json("GET", "/v1/models/" + m["id"])[1]["profile"] is None


def test_profiles_are_behind_the_token_and_attaching_needs_the_submit_role(
        daemon, pair):
    tokens = {role: daemon.run_cli("token", "create", "--role", role, "--name",
                                   "t-" + role).stdout.strip()
              for role in ("read", "submit")}
    body = body_of(pair_profile())
    url = "/v1/models/%s/profile" % pair["id"]
    assert_problem(*put_profile(daemon, pair["id"], body), 401, "unauthorized")
    assert_problem(*put_profile(daemon, pair["id"], body, token=tokens["read"]),
                   403, "forbidden")
    assert daemon.json("GET", "/v1/models/" + pair["id"],
                       token=tokens["read"])[1]["profile"] is None
    status, _, data = put_profile(daemon, pair["id"], body, token=tokens["submit"])
    assert status == 200, data
    assert_problem(*daemon.request("GET", url), 401, "unauthorized")
    status, _, got = daemon.request("GET", url, token=tokens["read"])
    assert status == 200 and got == body
    assert_problem(*daemon.request("POST", "/v1/jobs", {"model": pair["id"],
                                                        "profile": True}),
                   401, "unauthorized")
    assert_problem(*daemon.request("DELETE", url), 401, "unauthorized")
    assert_problem(*daemon.request("DELETE", url, token=tokens["read"]),
                   403, "forbidden")
    assert daemon.request("DELETE", url, token=tokens["submit"])[0] == 204


@pytest.mark.skipif(os.environ.get("DECOMPD_TS_ENABLED") != "1",
                    reason="a build without the torchscript feature")
def test_a_torchscript_model_takes_a_profile_once_a_job_has_read_its_spec(
        daemon_factory):
    d = daemon_factory(args=["--workers", "1"]).start()

    class Net(Pair):
        def forward(self, x):
            return self.slow(self.fast(x))

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Net()), buf)
    _, m = d.upload(buf.getvalue())
    assert m["format"] == "torchscript"
    body = body_of(pair_profile())
    assert_problem(*put_profile(d, m["id"], body), 409, "conflict")
    first = submit(d, m["id"], 201)
    assert d.wait_job(first["id"])["state"] == "succeeded"
    p = attach(d, m["id"], body)  # checked against the archive's spec
    assert p["layers"] == 2
    job = submit(d, m["id"], 201, profile=True)
    _, info = info_of(d, job["id"])
    assert info["profile"]["digest"] == p["digest"]
    assert [l["name"] for l in info["layers"]] == ["fast"]
