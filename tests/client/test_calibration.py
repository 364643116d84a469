"""Calibrations through the clients against the real daemon: decompctl
(libdecompclient) attaches one at upload and submits with it (a file,
"attached" or its digest: one job), and the Python Client submits with a
calibration given as a path or as bytes; both jobs run whitened (the info
file names the calibration and records the Linear's output error), the same
input without it is another job, and a bad calibration is refused with the
server's bad_calibration naming the layer."""
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import calibration_bytes, client_env, ctl, url_of

POLICY = {"name": "fixed", "rank": 6, "types": ["Conv2d", "Linear"],
          "require_cheaper": False}


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(48, 24)


SPEC = {"layers": [
    {"name": "conv", "type": "Conv2d", "in_channels": 8, "out_channels": 16,
     "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
     "dilation": [1, 1], "groups": 1, "bias": True, "padding_mode": "zeros"},
    {"name": "fc", "type": "Linear", "in_features": 48, "out_features": 24,
     "bias": True}]}


def grams(seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 48)) @ rng.standard_normal((48, 48))
    P = rng.standard_normal((300, 72)) @ rng.standard_normal((72, 72))
    return {"fc": X.T @ X, "conv": (P.T @ P)[None]}


@pytest.fixture
def files(tmp_path):
    """Paths of Head's weights, its spec, a calibration and a bad one."""
    torch.manual_seed(0)
    torch.save(Head().state_dict(), tmp_path / "w.pth")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    (tmp_path / "cal.safetensors").write_bytes(calibration_bytes(grams()))
    g = grams()
    g["fc"] = g["fc"][:40, :40]  # the wrong size for fc
    (tmp_path / "bad.safetensors").write_bytes(calibration_bytes(g))
    return tmp_path


def digest_of(path):
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_decompctl_attaches_at_upload_and_submits_with_the_calibration(daemon, files):
    env = client_env(daemon, files / "cache")
    cal = digest_of(files / "cal.safetensors")
    r = ctl("upload", files / "w.pth", "--spec", files / "spec.json",
            "--calibration", files / "cal.safetensors", env=env)
    assert r.returncode == 0, r.stderr
    model = r.stdout.strip()
    assert model.startswith("m_") and "calibration of 2 layers" in r.stderr
    _, m = daemon.json("GET", "/v1/models/" + model, expect=200)
    assert m["calibration"]["digest"] == cal and m["has_spec"]

    r = ctl("submit", model, "--policy", "@%s" % (files / "policy.json"),
            "--calibration", "attached", env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    # the file again (with the spec), or the digest: the same job
    r = ctl("submit", files / "w.pth", "--spec", files / "spec.json", "--policy",
            "@%s" % (files / "policy.json"), "--calibration",
            files / "cal.safetensors", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["id"] == job and doc["calibration"] == cal
    r = ctl("submit", model, "--policy", "@%s" % (files / "policy.json"),
            "--calibration", cal, env=env)
    assert r.returncode == 0 and r.stdout.strip() == job, r.stderr
    assert ctl("wait", job, "--timeout", "120", env=env).returncode == 0
    r = ctl("fetch", job, "--out", files / "out", "--only", "decompose_info.json",
            env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads((files / "out" / "decompose_info.json").read_text())
    assert info["calibration"] == {"digest": cal, "layers": 2}
    fc = {l["name"]: l for l in info["layers"]}["fc"]
    assert fc["method"] == "svd" and 0 < fc["stats"]["output_relative_error"] < 1

    # without it: another job
    r = ctl("submit", model, "--policy", "@%s" % (files / "policy.json"), env=env)
    assert r.returncode == 0 and r.stdout.strip() != job, r.stderr


def test_decompctl_reports_a_bad_calibration_and_a_model_without_a_spec(daemon, files):
    env = client_env(daemon, files / "cache")
    r = ctl("upload", files / "w.pth", env=env)
    assert r.returncode == 0, r.stderr
    model = r.stdout.strip()
    # no spec on the model yet: the server says so (409: exit 1)
    r = ctl("upload", "--model", model, "--calibration", files / "cal.safetensors",
            env=env)
    assert r.returncode == 1 and "layer spec" in r.stderr, r.stderr
    # the wrong size for fc: bad input (exit 3) naming the layer
    r = ctl("upload", "--model", model, "--spec", files / "spec.json",
            "--calibration", files / "bad.safetensors", "--json", env=env)
    assert r.returncode == 3, r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "bad_calibration" and "layer fc" in err["message"]
    assert err["exit"] == 3
    # a digest the model does not have: conflict
    r = ctl("submit", model, "--calibration", digest_of(files / "cal.safetensors"),
            env=env)
    assert r.returncode == 1 and "conflict" in r.stderr, r.stderr
    r = ctl("upload", "--model", model, env=env)  # nothing to do: usage
    assert r.returncode == 2


def test_python_client_submits_with_a_calibration_path_or_bytes(daemon, files):
    from decompd.client import Client, ConflictError, ServiceValueError
    c = Client(url_of(daemon), cache=str(files / "cache"))
    cal = digest_of(files / "cal.safetensors")
    job = c.submit(str(files / "w.pth"), SPEC, POLICY,
                   calibration=(files / "cal.safetensors").read_bytes())
    assert job.calibration == cal
    again = c.submit(str(files / "w.pth"), json.dumps(SPEC), POLICY,
                     calibration=str(files / "cal.safetensors"))
    assert again.id == job.id
    assert c.submit(str(files / "w.pth"), SPEC, POLICY, calibration=True).id == job.id
    assert c.submit(str(files / "w.pth"), SPEC, POLICY, calibration=cal).id == job.id
    done = c.wait(job, progress=False)
    assert done.state == "succeeded" and done.calibration == cal
    info = json.loads(open(c.fetch(done, only="decompose_info.json")
                           ["decompose_info.json"]).read())
    assert info["calibration"]["digest"] == cal
    fc = {l["name"]: l for l in info["layers"]}["fc"]
    assert "output_relative_error" in fc["stats"]

    plain = c.submit(str(files / "w.pth"), SPEC, POLICY)
    assert plain.id != job.id and plain.calibration is None
    assert c.model(job.model)["calibration"]["digest"] == cal

    with pytest.raises(ServiceValueError) as e:
        c.submit(str(files / "w.pth"), SPEC, POLICY,
                 calibration=(files / "bad.safetensors").read_bytes())
    assert e.value.code_name == "bad_calibration" and "layer fc" in str(e.value)
    c.detach_calibration(job.model)
    with pytest.raises(ConflictError):
        c.submit(str(files / "w.pth"), SPEC, {"name": "budget"}, calibration=True)
    c.wait(plain, progress=False)
