"""Calibrations over HTTP (issue 13, the service half), against the real
daemon: a decompd.calibration safetensors file (written here: JSON header +
numpy bytes) attached to a model with PUT /v1/models/{id}/calibration is
checked against the model's layer spec, stored content-addressed, and a job
submitted with it decomposes the layers it covers whitened: a Linear's
output error on the calibration's data is numpy's whitened optimum, and the
info file records it. The calibration is part of a job's identity; every
bad calibration is a 422 bad_calibration naming the layer with nothing
stored; attaching needs the submit role."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import assert_problem, calibration_bytes

R = 6
POLICY = {"name": "fixed", "rank": R, "types": ["Conv2d", "Linear"],
          "require_cheaper": False}


class Head(nn.Module):
    """A grouped conv and a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(48, 24)


def head_spec():
    return {"layers": [
        {"name": "conv", "type": "Conv2d", "in_channels": 8, "out_channels": 16,
         "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
         "dilation": [1, 1], "groups": 2, "bias": True, "padding_mode": "zeros"},
        {"name": "fc", "type": "Linear", "in_features": 48, "out_features": 24,
         "bias": True}]}


def head_grams(seed=1):
    """Grams of correlated inputs: the Linear's [48, 48], the conv's
    [2, 36, 36] (per group: 4 channels x 3 x 3 patches)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((400, 48)) @ (rng.standard_normal((48, 48)) *
                                          np.logspace(0, -2, 48))
    P = rng.standard_normal((2, 300, 36)) @ (rng.standard_normal((36, 36)) *
                                             np.logspace(0, -1.5, 36))
    return {"fc": X.T @ X, "conv": np.stack([p.T @ p for p in P])}


@pytest.fixture
def head(daemon):
    """(net, model json) of Head uploaded, its spec attached."""
    torch.manual_seed(0)
    net = Head()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    status, m = daemon.upload(buf.getvalue(), name="head")
    assert status == 201, m
    daemon.json("PUT", "/v1/models/%s/spec" % m["id"], head_spec(), expect=200)
    return net, m


def blob_files(daemon):
    out = set()
    for sub in ("blobs", "tmp"):
        for root, _, files in os.walk(os.path.join(daemon.data_dir, sub)):
            out |= {os.path.join(root, f) for f in files}
    return out


def put_calibration(daemon, model_id, body, token=None):
    return daemon.request("PUT", "/v1/models/%s/calibration" % model_id,
                          body=body, token=token,
                          headers={"Content-Type": "application/octet-stream"})


def attach(daemon, model_id, body):
    status, _, data = put_calibration(daemon, model_id, body)
    assert status == 200, data
    return json.loads(data)


def submit(daemon, model_id, expect, **extra):
    req = {"model": model_id, "policy": POLICY}
    req.update(extra)
    return daemon.json("POST", "/v1/jobs", req, expect=expect)[1]


def result(daemon, job_id):
    done = daemon.wait_job(job_id)
    assert done["state"] == "succeeded", done
    base = "/v1/jobs/%s/artifacts/" % job_id
    info = json.loads(daemon.request("GET", base + "decompose_info.json")[2])
    sd = torch.load(io.BytesIO(daemon.request("GET", base + "decomposed_weights.pth")[2]),
                    weights_only=True)
    return done, info, sd


def test_calibrated_linear_reaches_numpys_whitened_optimum_and_the_info_file_says_so(
        daemon, head):
    net, m = head
    grams = head_grams()
    body = calibration_bytes(grams)
    cal = attach(daemon, m["id"], body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert cal["digest"] == digest and cal["layers"] == 2 and cal["size"] == len(body)
    _, got = daemon.json("GET", "/v1/models/" + m["id"], expect=200)
    assert got["calibration"] == cal
    # the stored file is the body, served like any blob
    status, hdrs, data = daemon.request("GET", cal["url"])
    assert status == 200 and data == body and hdrs["etag"] == '"%s"' % digest

    job = submit(daemon, m["id"], 201, calibration=True)
    assert job["calibration"] == digest
    done, info, sd = result(daemon, job["id"])
    assert done["calibration"] == digest
    assert info["calibration"] == {"digest": digest, "layers": 2}
    layers = {l["name"]: l for l in info["layers"]}
    assert layers["fc"]["method"] == "svd" and layers["conv"]["method"] == "channel_svd"
    assert layers["fc"]["original"] == {"type": "Linear", "in_features": 48,
                                        "out_features": 24, "bias": True}

    # The Linear: ||(W - W~)S|| / ||WS|| with S S^T = G, from the written
    # factors, is numpy's optimum (S = chol(G), the SVD of W S) within 1%.
    W = net.fc.weight.detach().double().numpy()
    Wt = sd["fc.1.weight"].double().numpy() @ sd["fc.0.weight"].double().numpy()
    assert sd["fc.0.weight"].shape == (R, 48) and sd["fc.1.weight"].shape == (24, R)
    assert torch.equal(sd["fc.1.bias"], net.fc.bias.detach())
    S = np.linalg.cholesky(grams["fc"])
    s = np.linalg.svd(W @ S, compute_uv=False)
    opt = np.sqrt((s[R:] ** 2).sum() / (s ** 2).sum())
    err = np.linalg.norm((W - Wt) @ S) / np.linalg.norm(W @ S)
    assert abs(err / opt - 1) <= 0.01, (err, opt)
    st = layers["fc"]["stats"]
    assert abs(st["output_relative_error"] - err) <= 0.01 * err
    assert abs(st["output_energy_retained"] - (1 - err ** 2)) <= 1e-3
    assert st["samples"] == 1000
    assert "output_relative_error" in layers["conv"]["stats"]
    # The conv, group by group over its patch Grams, through the pair.
    Wc = net.conv.weight.detach().double().numpy().reshape(2, 8, 36)
    f = sd["conv.0.weight"].double().numpy().reshape(2, R, 36)
    g = sd["conv.1.weight"].double().numpy().reshape(2, 8, R)
    tot = tail = cerr = 0.0
    for j in range(2):
        Sj = np.linalg.cholesky(grams["conv"][j])
        sj = np.linalg.svd(Wc[j] @ Sj, compute_uv=False)
        tot += (sj ** 2).sum()
        tail += (sj[R:] ** 2).sum()
        cerr += np.linalg.norm((Wc[j] - g[j] @ f[j]) @ Sj) ** 2
    assert abs(np.sqrt(cerr / tot) / np.sqrt(tail / tot) - 1) <= 0.01

    # The same submit again is the same job, by true or by digest.
    assert submit(daemon, m["id"], 200, calibration=True)["id"] == job["id"]
    assert submit(daemon, m["id"], 200, calibration=digest)["id"] == job["id"]

    # Without the calibration: another job, with plain (weight) errors.
    plain = submit(daemon, m["id"], 201)
    assert plain["id"] != job["id"] and plain["calibration"] is None
    _, pinfo, psd = result(daemon, plain["id"])
    assert "calibration" not in pinfo or pinfo["calibration"] is None
    pfc = {l["name"]: l for l in pinfo["layers"]}["fc"]
    assert "output_relative_error" not in pfc["stats"]
    sv = np.linalg.svd(W, compute_uv=False)
    wopt = np.sqrt((sv[R:] ** 2).sum() / (sv ** 2).sum())
    assert abs(pfc["stats"]["relative_error"] / wopt - 1) <= 0.01
    Wp = psd["fc.1.weight"].double().numpy() @ psd["fc.0.weight"].double().numpy()
    # on the data, the whitened one is the better one
    assert err < np.linalg.norm((W - Wp) @ S) / np.linalg.norm(W @ S)


def test_submit_without_calibration_false_and_null_are_one_job(daemon, head):
    _, m = head
    a = submit(daemon, m["id"], 201)
    assert submit(daemon, m["id"], 200, calibration=False)["id"] == a["id"]
    assert submit(daemon, m["id"], 200, calibration=None)["id"] == a["id"]
    daemon.wait_job(a["id"])


BAD = {
    # case: (edit of the grams, metadata layers or None, what the detail names)
    "wrong_size": (lambda g: {**g, "fc": g["fc"][:40, :40]}, None, "layer fc"),
    "conv_wrong_size": (lambda g: {**g, "conv": g["conv"][:, :30, :30]}, None,
                        "layer conv"),
    "not_finite": (lambda g: {**g, "fc": np.where(np.eye(48) > 0, np.inf, g["fc"])},
                   None, "layer fc"),
    "not_symmetric": (lambda g: {**g, "fc": g["fc"] + np.triu(np.ones((48, 48)), 1)},
                      None, "layer fc"),
    "unknown_layer": (lambda g: g, {"ghost": {"gram": "fc", "type": "Linear"}},
                      "layer ghost"),
    "wrong_type": (lambda g: g, {"fc": {"gram": "fc", "type": "Conv2d"}},
                   "layer fc"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_calibration_is_422_naming_the_layer_and_nothing_is_stored(
        daemon, head, case):
    _, m = head
    edit, layers, needle = BAD[case]
    before = blob_files(daemon)
    status, hdrs, body = put_calibration(daemon, m["id"],
                                         calibration_bytes(edit(head_grams()), layers))
    doc = assert_problem(status, hdrs, body, 422, "bad_calibration")
    assert needle in doc["detail"], doc
    assert blob_files(daemon) == before
    assert daemon.json("GET", "/v1/models/" + m["id"], expect=200)[1]["calibration"] is None


def test_what_is_not_a_calibration_file_is_422_and_nothing_is_stored(daemon, head):
    net, m = head
    before = blob_files(daemon)
    weights = daemon.request("GET", "/v1/models/%s/content" % m["id"])[2]
    for body, needle in ((weights, "not a decompd calibration"),
                         (b"\x00not a calibration at all" * 50,
                          "not a decompd calibration"),
                         (b"", "empty"),
                         (calibration_bytes(head_grams(), meta={"format": "x"}),
                          "not a decompd calibration")):
        status, hdrs, data = put_calibration(daemon, m["id"], body)
        doc = assert_problem(status, hdrs, data, 422, "bad_calibration")
        assert needle in doc["detail"], doc
        assert daemon.data_dir not in doc["detail"]  # no server paths
    assert blob_files(daemon) == before


def test_a_model_without_a_spec_cannot_take_a_calibration_yet(daemon):
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(Head().state_dict(), buf)
    _, m = daemon.upload(buf.getvalue())
    before = blob_files(daemon)
    status, hdrs, body = put_calibration(daemon, m["id"], calibration_bytes(head_grams()))
    doc = assert_problem(status, hdrs, body, 409, "conflict")
    assert "spec" in doc["detail"]
    assert blob_files(daemon) == before
    status, hdrs, body = put_calibration(daemon, "m_0000000000000000",
                                         calibration_bytes(head_grams()))
    assert_problem(status, hdrs, body, 404, "not_found")


def test_a_job_calibration_is_checked_against_the_jobs_spec(daemon, head):
    _, m = head
    attach(daemon, m["id"], calibration_bytes(head_grams()))
    # the job's own spec leaves fc out: the calibration names a layer it lacks
    spec = head_spec()
    spec["layers"] = spec["layers"][:1]
    status, hdrs, body = daemon.request(
        "POST", "/v1/jobs", {"model": m["id"], "spec": spec, "policy": POLICY,
                             "calibration": True})
    doc = assert_problem(status, hdrs, body, 422, "bad_calibration")
    assert "fc" in doc["detail"]
    for bad in ("sha256:xyz", 3, {"digest": "x"}):
        status, hdrs, body = daemon.request(
            "POST", "/v1/jobs", {"model": m["id"], "calibration": bad})
        assert_problem(status, hdrs, body, 400, "bad_request")
    assert daemon.json("GET", "/v1/jobs")[1]["jobs"] == []


def test_replacing_and_detaching_keep_what_jobs_use(daemon, head):
    _, m = head
    first = calibration_bytes(head_grams(1))
    second = calibration_bytes(head_grams(2))
    a = attach(daemon, m["id"], first)
    job = submit(daemon, m["id"], 201, calibration=a["digest"])
    b = attach(daemon, m["id"], second)
    assert b["digest"] != a["digest"]
    # a new job cannot name the replaced one; the one that did keeps it
    status, hdrs, body = daemon.request(
        "POST", "/v1/jobs", {"model": m["id"], "policy": "budget",
                             "calibration": a["digest"]})
    doc = assert_problem(status, hdrs, body, 409, "conflict")
    assert b["digest"] in doc["detail"]
    assert submit(daemon, m["id"], 200, calibration=a["digest"])["id"] == job["id"]
    done, info, _ = result(daemon, job["id"])
    assert info["calibration"]["digest"] == a["digest"]
    with_b = submit(daemon, m["id"], 201, calibration=True)
    assert with_b["calibration"] == b["digest"] and with_b["id"] != job["id"]
    daemon.wait_job(with_b["id"])

    def blob(d):
        return os.path.join(daemon.data_dir, "blobs", "sha256", d[7:9], d[7:])

    # detach: gone from the model, kept while jobs name it
    assert daemon.request("DELETE", b["url"])[0] == 204
    assert_problem(*daemon.request("DELETE", b["url"]), 404, "not_found")
    assert_problem(*daemon.request("GET", b["url"]), 404, "not_found")
    assert daemon.json("GET", "/v1/models/" + m["id"])[1]["calibration"] is None
    status, hdrs, body = daemon.request("POST", "/v1/jobs", {"model": m["id"],
                                                             "calibration": True})
    assert_problem(status, hdrs, body, 409, "conflict")
    assert os.path.exists(blob(a["digest"])) and os.path.exists(blob(b["digest"]))
    # deleting the jobs lets the blobs go
    assert daemon.request("DELETE", "/v1/jobs/" + job["id"])[0] == 204
    assert not os.path.exists(blob(a["digest"]))
    assert daemon.request("DELETE", "/v1/jobs/" + with_b["id"])[0] == 204
    assert not os.path.exists(blob(b["digest"]))
    # and deleting the model takes its calibration along
    attach(daemon, m["id"], first)
    assert os.path.exists(blob(a["digest"]))
    assert daemon.request("DELETE", "/v1/models/" + m["id"])[0] == 204
    assert not os.path.exists(blob(a["digest"]))


def test_a_calibration_over_max_upload_bytes_is_413(daemon_factory):
    d = daemon_factory(args=["--max-upload-bytes", "20000"]).start()
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(Head().state_dict(), buf)
    _, m = d.upload(buf.getvalue())
    d.json("PUT", "/v1/models/%s/spec" % m["id"], head_spec(), expect=200)
    body = calibration_bytes(head_grams())
    assert len(body) > 20000
    before = blob_files(d)
    status, hdrs, data = put_calibration(d, m["id"], body)
    assert_problem(status, hdrs, data, 413, "payload_too_large")
    assert blob_files(d) == before
    assert d.json("GET", "/v1/models/" + m["id"])[1]["calibration"] is None


def test_attaching_a_calibration_needs_the_submit_role(daemon, head):
    _, m = head
    tokens = {role: daemon.run_cli("token", "create", "--role", role, "--name",
                                   "t-" + role).stdout.strip()
              for role in ("read", "submit")}
    body = calibration_bytes(head_grams())
    assert_problem(*put_calibration(daemon, m["id"], body), 401, "unauthorized")
    assert_problem(*put_calibration(daemon, m["id"], body, token=tokens["read"]),
                   403, "forbidden")
    assert daemon.json("GET", "/v1/models/" + m["id"],
                       token=tokens["read"])[1]["calibration"] is None
    status, _, data = put_calibration(daemon, m["id"], body, token=tokens["submit"])
    assert status == 200, data
    status, _, got = daemon.request("GET", "/v1/models/%s/calibration" % m["id"],
                                    token=tokens["read"])
    assert status == 200 and got == body
    assert_problem(*daemon.request("DELETE", "/v1/models/%s/calibration" % m["id"],
                                   token=tokens["read"]), 403, "forbidden")


@pytest.mark.skipif(os.environ.get("DECOMPD_TS_ENABLED") != "1",
                    reason="a build without the torchscript feature")
def test_a_torchscript_model_takes_a_calibration_once_a_job_has_read_its_spec(
        daemon_factory):
    d = daemon_factory(args=["--workers", "1"]).start()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
            self.fc = nn.Linear(48, 24)

        def forward(self, x):
            return self.fc(self.conv(x).mean(dim=(2, 3)).repeat(1, 3))

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Net()), buf)
    _, m = d.upload(buf.getvalue())
    assert m["format"] == "torchscript"
    body = calibration_bytes(head_grams())
    assert_problem(*put_calibration(d, m["id"], body), 409, "conflict")
    first = submit(d, m["id"], 201)
    assert d.wait_job(first["id"])["state"] == "succeeded"
    cal = attach(d, m["id"], body)  # checked against the archive's spec
    assert cal["layers"] == 2
    job = submit(d, m["id"], 201, calibration=True)
    _, info, _ = result(d, job["id"])
    assert info["calibration"]["digest"] == cal["digest"]
    fc = {l["name"]: l for l in info["layers"]}["fc"]
    assert fc["method"] == "svd" and "output_relative_error" in fc["stats"]
