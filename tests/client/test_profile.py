"""Latency profiles through the clients against the real daemon: decompctl
(libdecompclient) attaches one at upload and submits with it (a file,
"attached" or its digest: one job), and the Python Client submits with a
profile given as a path, JSON text, a dict or an object with to_json();
each job decides per the profile (the layer whose every candidate is slower
is left alone) and its info file carries the predicted latencies; the same
input without it is another job; a bad profile is refused with the
server's bad_profile naming the layer; Client.decompose takes profile= and
calibration=."""
import hashlib
import json

import pytest
import torch
import torch.nn as nn

from conftest import client_env, ctl, latency_profile, url_of

POLICY = {"name": "fixed", "rank": 4}


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fast = nn.Conv2d(16, 16, 3, padding=1)
        self.slow = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.slow(self.fast(x))


CONV = {"type": "Conv2d", "in_channels": 16, "out_channels": 16,
        "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
        "dilation": [1, 1], "groups": 1, "bias": True, "padding_mode": "zeros"}
SPEC = {"layers": [dict(CONV, name="fast"), dict(CONV, name="slow")]}


class FakeProfile:
    """What decompd.profile gives, as far as the client cares: to_json()."""

    def __init__(self, doc):
        self.doc = doc

    def to_json(self):
        return json.dumps(self.doc, indent=2)


@pytest.fixture
def files(tmp_path):
    """Paths of Pair's weights, its spec, the policy, a profile and a bad one
    (a profile of another model: a layer Pair lacks)."""
    torch.manual_seed(0)
    torch.save(Pair().state_dict(), tmp_path / "w.pth")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    (tmp_path / "profile.json").write_text(
        json.dumps(latency_profile(SPEC, slow=("slow",)), indent=1))
    other = latency_profile(SPEC, slow=("slow",))
    other["layers"]["layer4.1.conv2"] = other["layers"].pop("slow")
    (tmp_path / "other.json").write_text(json.dumps(other))
    return tmp_path


def digest_of(path):
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def info_of(daemon, job_id):
    done = daemon.wait_job(job_id)
    assert done["state"] == "succeeded", done
    return json.loads(daemon.request(
        "GET", "/v1/jobs/%s/artifacts/decompose_info.json" % job_id)[2])


def assert_chose_per_profile(info, digest):
    assert info["profile"]["digest"] == digest
    assert [l["name"] for l in info["layers"]] == ["fast"]
    assert "max_slowdown" in {s["name"]: s["reason"] for s in info["skipped"]}["slow"]
    st = info["layers"][0]["stats"]
    assert st["latency_before"] == pytest.approx(0.010)
    assert 0 < st["latency_after"] < st["latency_before"]
    assert info["summary"]["latency_before"] == pytest.approx(0.011)


def test_decompctl_attaches_at_upload_and_submits_with_the_profile(daemon, files):
    env = client_env(daemon, files / "cache")
    prof = digest_of(files / "profile.json")
    r = ctl("upload", files / "w.pth", "--spec", files / "spec.json",
            "--profile", files / "profile.json", env=env)
    assert r.returncode == 0, r.stderr
    model = r.stdout.strip()
    assert model.startswith("m_") and "latency profile of 2 layers" in r.stderr
    _, m = daemon.json("GET", "/v1/models/" + model, expect=200)
    assert m["profile"]["digest"] == prof and m["has_spec"]

    r = ctl("submit", model, "--policy", "@%s" % (files / "policy.json"),
            "--profile", "attached", env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    # the file again (with the spec), or the digest: the same job
    r = ctl("submit", files / "w.pth", "--spec", files / "spec.json", "--policy",
            "@%s" % (files / "policy.json"), "--profile", files / "profile.json",
            "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["id"] == job and doc["profile"] == prof
    r = ctl("submit", model, "--policy", "@%s" % (files / "policy.json"),
            "--profile", prof, env=env)
    assert r.returncode == 0 and r.stdout.strip() == job, r.stderr
    # without it: another job, which decomposes both layers
    r = ctl("submit", model, "--policy", "@%s" % (files / "policy.json"), env=env)
    assert r.returncode == 0 and r.stdout.strip() != job, r.stderr
    plain = r.stdout.strip()

    r = ctl("wait", job, env=env)
    assert r.returncode == 0, r.stderr
    assert_chose_per_profile(info_of(daemon, job), prof)
    assert sorted(l["name"] for l in info_of(daemon, plain)["layers"]) == ["fast", "slow"]


def test_decompctl_a_bad_profile_exits_3_naming_the_layer(daemon, files):
    env = client_env(daemon, files / "cache")
    r = ctl("upload", files / "w.pth", "--spec", files / "spec.json", env=env)
    model = r.stdout.strip()
    r = ctl("upload", "--model", model, "--profile", files / "other.json", env=env)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "bad_profile" in r.stderr and "layer4.1.conv2" in r.stderr, r.stderr
    assert "other.json" in r.stderr
    r = ctl("submit", model, "--profile", files / "other.json", env=env)
    assert r.returncode == 3 and "layer4.1.conv2" in r.stderr, r.stderr
    # "attached" with none attached: the server's conflict, said
    r = ctl("submit", model, "--profile", "attached", env=env)
    assert r.returncode not in (0, 2) and "no profile attached" in r.stderr, r.stderr
    assert daemon.json("GET", "/v1/models/" + model)[1]["profile"] is None
    assert daemon.json("GET", "/v1/jobs")[1]["jobs"] == []


def test_decompctl_help_documents_profile():
    for verb in ("upload", "submit"):
        r = ctl(verb, "--help")
        assert r.returncode == 0 and "--profile" in r.stdout, r.stdout


def test_python_client_takes_a_profile_as_path_text_dict_or_to_json(daemon, files):
    from decompd.client import Client, ServiceValueError
    c = Client(url_of(daemon), cache=files / "cache")
    path = files / "profile.json"
    text = path.read_text()
    doc = json.loads(text)

    job = c.submit(files / "w.pth", SPEC, POLICY, profile=path)
    assert job.profile == digest_of(path)
    # the same bytes as JSON text or as what to_json() gives: the same job
    assert c.submit(files / "w.pth", SPEC, POLICY, profile=text).id == job.id
    assert c.submit(files / "w.pth", SPEC, POLICY,
                    profile=FakeProfile(doc)).profile \
        == "sha256:" + hashlib.sha256(FakeProfile(doc).to_json().encode()).hexdigest()
    # a dict, twice: one job; True and its digest name the attached one
    by_dict = c.submit(files / "w.pth", SPEC, POLICY, profile=doc)
    assert c.submit(files / "w.pth", SPEC, POLICY, profile=doc).id == by_dict.id
    assert c.submit(files / "w.pth", SPEC, POLICY, profile=True).id == by_dict.id
    assert c.submit(files / "w.pth", SPEC, POLICY,
                    profile=by_dict.profile).id == by_dict.id
    assert c.model(job.model)["profile"]["digest"] == by_dict.profile
    assert c.get_profile(job.model) == doc
    plain = c.submit(files / "w.pth", SPEC, POLICY)
    assert plain.profile is None and plain.id not in (job.id, by_dict.id)

    c.wait(job, progress=False)
    assert_chose_per_profile(info_of(daemon, job.id), job.profile)

    with pytest.raises(ServiceValueError) as e:
        c.put_profile(job.model, files / "other.json")
    assert e.value.code_name == "bad_profile" and "layer4.1.conv2" in str(e.value)
    with pytest.raises(TypeError):
        c.attach_profile(job.model, 3)
    c.detach_profile(job.model)
    assert c.model(job.model)["profile"] is None


def test_python_client_decompose_with_a_profile_and_a_calibration(daemon, files):
    """Client.decompose(profile=, calibration=): the live module's job runs
    with both; the slow conv stays an nn.Conv2d, the other becomes a pair."""
    import numpy as np
    from conftest import calibration_bytes
    from decompd.client import Client
    torch.manual_seed(0)
    net = Pair()
    rng = np.random.default_rng(0)
    P = rng.standard_normal((300, 144)) @ rng.standard_normal((144, 144))
    cal = calibration_bytes({"fast": (P.T @ P)[None]})
    c = Client(url_of(daemon), cache=files / "cache")
    info_path = files / "out" / "info.json"
    new, changes = c.decompose(net, info_path, policy=POLICY, progress=False,
                               profile=latency_profile(SPEC, slow=("slow",)),
                               calibration=cal)
    assert new is net and list(changes) == ["fast"]
    assert isinstance(net.slow, nn.Conv2d)
    assert isinstance(net.fast, nn.Sequential) and len(net.fast) == 2
    info = json.loads(info_path.read_text())
    assert info["calibration"]["digest"] == "sha256:" + hashlib.sha256(cal).hexdigest()
    assert info["profile"]["device_name"] == "test cpu"
    fast = info["layers"][0]
    assert fast["method"] == "channel_svd" and "output_relative_error" in fast["stats"]
    assert fast["stats"]["latency_after"] < fast["stats"]["latency_before"]
    x = torch.randn(2, 16, 8, 8)
    assert net(x).shape == (2, 16, 8, 8)
