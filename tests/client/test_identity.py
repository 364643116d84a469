"""Service and in-process results are bit-identical for the same model and
policy: auto_decomposition(model, server=URL) (and with DECOMPD_URL set)
against auto_decomposition(model) on the in-process engine — same changes,
same state dict bytes, same per-layer choices in the info file.

Both sides run OpenBLAS with one thread (the meson test environment sets
OPENBLAS_NUM_THREADS=1, the daemon runs --workers 1 --blas-threads 1): the
engine's SVD results depend on the BLAS thread count in the last bits, so a
daemon worker with 1 thread and an in-process call with 2 differ there."""
import json
import os

import pytest
import torch

from conftest import SmallNet, url_of


def resnet():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18()


def same(a, b, tag):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb), tag
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, (tag, k)
        assert torch.equal(sa[k], sb[k]), (tag, k)


def shared():
    """A conv object reachable under two names (used twice in a row)."""
    import torch.nn as nn
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), conv, nn.ReLU(),
                         conv, nn.AdaptiveAvgPool2d(1))


SPECTRA = ("singular_values", "singular_values_by_group")


def layers(path):
    """Per-layer choices; the spectra the daemon records for the dashboard
    (decomp_options.record_spectra) are not choices, and in-process runs
    leave them out."""
    info = json.load(open(path))
    out = []
    for l in info["layers"]:
        l = dict(l)
        l["stats"] = {k: v for k, v in l["stats"].items() if k not in SPECTRA}
        out.append(l)
    return out, info["changes"]


@pytest.mark.parametrize("make,policy", [
    (SmallNet.make, None),
    (SmallNet.make, {"name": "energy", "energy": 0.9}),
    (resnet, "amct"),
    (resnet, None),
    (shared, {"name": "fixed", "rank": 8}),
])
def test_service_equals_in_process(daemon, tmp_path, make, policy):
    from decompd.tensor_decompose import auto_decomposition
    local, lch = auto_decomposition(make(), tmp_path / "local.json",
                                    policy=policy)
    os.environ["DECOMPD_CACHE"] = str(tmp_path / "cache")
    try:
        remote, rch = auto_decomposition(make(), tmp_path / "remote.json",
                                         policy=policy, server=url_of(daemon))
    finally:
        del os.environ["DECOMPD_CACHE"]
    assert lch == rch and lch
    same(local, remote, (make.__name__, policy))
    if make is shared:  # still one object under both names, on both sides
        assert local[1] is local[3] and remote[1] is remote[3]
    assert layers(tmp_path / "local.json") == layers(tmp_path / "remote.json")


def test_decompd_url_runs_on_the_service(daemon, tmp_path, monkeypatch):
    from decompd.tensor_decompose import auto_decomposition
    x = torch.randn(2, 3, 32, 32)
    local, lch = auto_decomposition(SmallNet.make(), example_input=x)
    monkeypatch.setenv("DECOMPD_URL", url_of(daemon))
    monkeypatch.setenv("DECOMPD_CACHE", str(tmp_path / "cache"))
    remote, rch = auto_decomposition(SmallNet.make(), example_input=x)
    assert lch == rch
    same(local, remote, "DECOMPD_URL")
    # It really went through the service: the job is in the cache.
    assert len(os.listdir(tmp_path / "cache" / "jobs")) == 1


def test_bare_conv_and_weights_file_submissions(daemon, tmp_path):
    from decompd.client import Client
    from decompd.tensor_decompose import auto_decomposition
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(64, 64, 5, padding=2)
    keep = {k: v.clone() for k, v in conv.state_dict().items()}
    local, lch = auto_decomposition(conv)
    remote, rch = auto_decomposition(conv, server=url_of(daemon))
    assert lch == rch == {"": ["0", "1"]}
    same(local, remote, "bare conv")
    for k, v in conv.state_dict().items():  # the argument is untouched
        assert torch.equal(v, keep[k])
    # A weights file with its spec, then pull onto a live module.
    w, s = SmallNet.write(tmp_path)
    c = Client(url_of(daemon), cache=str(tmp_path / "cache"))
    job = c.wait(c.submit(w, spec=open(s).read()), progress=False)
    pulled, pch = c.pull(SmallNet.make(seed=4), job)
    local, lch = auto_decomposition(SmallNet.make())
    assert pch == lch
    same(local, pulled, "weights file")


def test_torchscript_file_submission(daemon, tmp_path):
    """A TorchScript archive: the server reads it where its build can;
    otherwise the client loads it, reads the convs' fields off the scripted
    modules and sends the weights with that spec. Same bytes either way."""
    from decompd.client import Client
    from decompd.tensor_decompose import auto_decomposition
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(SmallNet.make()), str(path))
    c = Client(url_of(daemon), cache=str(tmp_path / "cache"))
    job = c.wait(c.submit(str(path)), progress=False)
    pulled, pch = c.pull(SmallNet.make(seed=3), job)
    local, lch = auto_decomposition(SmallNet.make())
    assert pch == lch and lch
    same(local, pulled, "torchscript")


def test_defaults_match_a_one_worker_daemon_without_pinning(daemon_factory, tmp_path, monkeypatch):
    """No thread pinning on either side: the in-process engine uses every
    core it may run on, as does a daemon with one worker (threads = cores ÷
    workers), so resnet18 — whose layer4 convs are large enough to run with
    several BLAS threads — comes out with the same bytes."""
    from decompd._engine import engine_threads
    from decompd.tensor_decompose import auto_decomposition
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("DECOMPD_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert engine_threads() == cores
    d = daemon_factory(args=("--workers", "1"), name="one-worker").start()
    local, lch = auto_decomposition(resnet(), tmp_path / "local.json")
    monkeypatch.setenv("DECOMPD_CACHE", str(tmp_path / "cache"))
    remote, rch = auto_decomposition(resnet(), tmp_path / "remote.json",
                                     server=url_of(d))
    assert lch == rch and lch
    same(local, remote, "defaults")
    assert layers(tmp_path / "local.json") == layers(tmp_path / "remote.json")


def test_service_equals_in_process_with_a_profile_and_a_calibration(daemon, tmp_path):
    """auto_decomposition(server=, profile=, calibration=) attaches both on
    the service and gives the in-process result bit for bit: a Calibration
    and a Profile in memory, and the same as files."""
    import numpy as np
    import torch.nn as nn
    from conftest import calibration_bytes, latency_profile
    from decompd import Calibration, Profile
    from decompd.tensor_decompose import auto_decomposition

    def make():
        torch.manual_seed(2)
        return nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1))
    conv = {"type": "Conv2d", "in_channels": 16, "out_channels": 16,
            "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "groups": 1, "bias": True,
            "padding_mode": "zeros"}
    spec = {"layers": [dict(conv, name="0"), dict(conv, name="2")]}
    prof_path = tmp_path / "profile.json"
    prof_path.write_text(json.dumps(latency_profile(spec, slow=("2",))))
    rng = np.random.default_rng(0)
    P = rng.standard_normal((300, 144)) @ rng.standard_normal((144, 144))
    cal_path = tmp_path / "cal.safetensors"
    cal_path.write_bytes(calibration_bytes({"0": (P.T @ P)[None]}))
    policy = {"name": "fixed", "rank": 4}
    local, lch = auto_decomposition(make(), tmp_path / "local.json",
                                    policy=policy, profile=str(prof_path),
                                    calibration=str(cal_path))
    assert list(lch) == ["0"]  # "2" is slower decomposed: left alone
    os.environ["DECOMPD_CACHE"] = str(tmp_path / "cache")
    try:
        for tag, prof, cal in (
                ("objects", Profile.load(str(prof_path)),
                 Calibration.load(str(cal_path))),
                ("files", str(prof_path), str(cal_path))):
            remote, rch = auto_decomposition(
                make(), tmp_path / f"{tag}.json", policy=policy,
                server=url_of(daemon), profile=prof, calibration=cal)
            assert rch == lch, tag
            same(local, remote, tag)
            assert layers(tmp_path / "local.json") == \
                layers(tmp_path / f"{tag}.json"), tag
            info = json.loads((tmp_path / f"{tag}.json").read_text())
            assert info["profile"]["device_name"] == "test cpu", tag
            assert info["calibration"]["digest"], tag
    finally:
        del os.environ["DECOMPD_CACHE"]
