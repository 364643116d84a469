"""TorchScript uploads (issue 8), against the real daemon: an archive is
accepted on its structure alone (format "torchscript"), and a job on it
needs no spec — the worker reads weights and spec in the sandboxed reader
process. The result equals, bit for bit, uploading the module's state dict
with the spec the Python package makes. Broken and hostile archives fail
their job with bad_torchscript and a clear message; the daemon serves on.

Registered only in builds with the `torchscript` feature; meson sets
DECOMPD_TS_READER to the build's reader. The daemons run with --workers 1
--blas-threads 1: both jobs of a comparison then run the same way, one at a
time (the engine's results do not depend on the thread count, but one
thread keeps this test from depending on that)."""
import io
import json
import os
import struct
import sys
import time
import zipfile
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torchvision

from decompd.spec import layer_spec_json, walk

sys.path.insert(0, os.path.join(os.environ["DECOMPD_SOURCE_DIR"], "tests",
                                "torchscript"))
from hostile_models import Hog, Spin  # noqa: E402

SERIAL = ["--workers", "1", "--blas-threads", "1"]


def resnet18():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None)
    for mod in m.modules():  # running stats that are really compared
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.num_batches_tracked.fill_(7)
    return m.eval()


def archive_bytes(model, how, example):
    with torch.no_grad():
        m = (torch.jit.script(model) if how == "script"
             else torch.jit.trace(model, example))
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    return buf.getvalue()


def state_dict_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def read_safetensors(blob):
    """OrderedDict name -> (dtype, shape, raw bytes) in header order."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n], object_pairs_hook=OrderedDict)
    data = blob[8 + n:]
    return OrderedDict((k, (e["dtype"], e["shape"],
                            data[e["data_offsets"][0]:e["data_offsets"][1]]))
                       for k, e in header.items() if k != "__metadata__")


def load_pth(blob):
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def artifacts(daemon, job):
    out = {}
    for name in ("decomposed_weights.pth", "decomposed_weights.safetensors",
                 "decompose_info.json"):
        status, _, body = daemon.request(
            "GET", "/v1/jobs/%s/artifacts/%s" % (job["id"], name))
        assert status == 200, (name, body[:300])
        out[name] = body
    return out


def run_job(daemon, body, timeout=600):
    status, job = daemon.json("POST", "/v1/jobs", body)
    assert status in (200, 201), job
    return daemon.wait_job(job["id"], timeout=timeout)


def still_serving(daemon):
    assert daemon.json("GET", "/healthz") == (200, {"status": "ok"})
    assert daemon.json("GET", "/v1/models")[0] == 200


def tmp_left(daemon):
    return os.listdir(daemon.tmp_dir())


def sigchld_ignored(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (17 - 1)))
    raise AssertionError("no SigIgn line")


# ---- resnet18: the archive's result is the state dict's -----------------

@pytest.fixture(scope="module")
def r18():
    model = resnet18()
    example = torch.randn(1, 3, 64, 64)
    return model, {how: archive_bytes(model, how, example)
                   for how in ("script", "trace")}


@pytest.mark.parametrize("how", ["script", "trace"])
def test_resnet18_equals_state_dict_with_python_spec(daemon_factory, r18, how):
    model, archives = r18
    d = daemon_factory(args=SERIAL).start()
    assert not sigchld_ignored(d.proc.pid)

    status, ts = d.upload(archives[how], name="r18-" + how)
    assert status == 201, ts
    assert ts["format"] == "torchscript" and ts["has_spec"] is False, ts
    status, again = d.upload(archives[how])
    assert status == 200 and again["id"] == ts["id"]
    # the archive is stored as uploaded
    assert d.request("GET", "/v1/models/%s/content" % ts["id"])[2] == archives[how]

    got = run_job(d, {"model": ts["id"], "policy": "budget"})
    assert got["state"] == "succeeded", got
    assert got["error"] is None
    assert got["progress"]["layers_done"] == got["progress"]["layers_total"] == 20

    status, sd = d.upload(state_dict_bytes(model), name="r18-sd")
    assert status == 201 and sd["format"] == "pth", sd
    spec = json.loads(layer_spec_json(walk(model)))
    want = run_job(d, {"model": sd["id"], "spec": spec, "policy": "budget"})
    assert want["state"] == "succeeded", want

    assert got["progress"] == want["progress"]
    assert [(l["name"], l["rank"]) for l in got["layers"]] == \
        [(l["name"], l["rank"]) for l in want["layers"]]
    ga, wa = artifacts(d, got), artifacts(d, want)

    # every tensor, same keys in the same order, same bytes
    gs = read_safetensors(ga["decomposed_weights.safetensors"])
    ws = read_safetensors(wa["decomposed_weights.safetensors"])
    assert list(gs) == list(ws)
    assert gs == ws
    assert any(k.endswith(".0.weight") for k in gs), "nothing decomposed"
    gp = load_pth(ga["decomposed_weights.pth"])
    wp = load_pth(wa["decomposed_weights.pth"])
    assert list(gp) == list(wp) == list(gs)
    for k in wp:
        assert gp[k].dtype == wp[k].dtype and gp[k].shape == wp[k].shape, k
        assert torch.equal(gp[k].reshape(-1).view(torch.uint8),
                           wp[k].reshape(-1).view(torch.uint8)), k
    # keys as the module's state_dict(): the tensors left as they were keep
    # their names and order
    sd_keys = list(model.state_dict())
    assert "bn1.running_var" in gs and "fc.weight" in gs
    assert [k for k in gs if k in sd_keys] == [k for k in sd_keys if k in gs]

    gi = json.loads(ga["decompose_info.json"])
    wi = json.loads(wa["decompose_info.json"])
    assert gi["source"]["format"] == "torchscript", gi["source"]
    assert gi["source"]["digest"] == ts["digest"]
    gi.pop("source")
    wi.pop("source")
    # peak_rss_bytes measures the processes that ran the work (on a
    # PostgreSQL index the state dict's job is spread over tasks, the
    # archive's runs whole): the rest must be equal
    for i in (gi, wi):
        i["summary"].pop("peak_rss_bytes", None)
    assert gi == wi
    assert tmp_left(d) == []
    still_serving(d)


def test_job_spec_overrides_the_archive(daemon_factory, tmp_path):
    """A job's own spec is used with the archive's weights, checked when the
    job runs; a spec that does not fit fails the job, not the daemon."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1)).eval()
    d = daemon_factory(args=SERIAL).start()
    status, ts = d.upload(archive_bytes(model, "script", None))
    assert status == 201, ts
    spec = json.loads(layer_spec_json(walk(model)))
    policy = {"name": "fixed", "rank": 4}
    a = run_job(d, {"model": ts["id"], "policy": policy})
    b = run_job(d, {"model": ts["id"], "spec": spec, "policy": policy})
    assert a["id"] != b["id"]
    assert a["state"] == b["state"] == "succeeded", (a, b)
    assert artifacts(d, a)["decomposed_weights.safetensors"] == \
        artifacts(d, b)["decomposed_weights.safetensors"]
    # only the first conv: the second is left as it is
    one = run_job(d, {"model": ts["id"], "spec": {"layers": spec["layers"][:1]},
                      "policy": policy})
    assert one["state"] == "succeeded", one
    names = list(read_safetensors(
        artifacts(d, one)["decomposed_weights.safetensors"]))
    assert "0.0.weight" in names and "2.weight" in names, names
    # a spec that does not match the archive's weights
    bad = json.loads(json.dumps(spec))
    bad["layers"][0]["out_channels"] = 8
    j = run_job(d, {"model": ts["id"], "spec": bad, "policy": policy})
    assert j["state"] == "failed", j
    assert j["error"]["code"] == "spec_mismatch", j
    # an attached spec is used the same way
    status, _ = d.json("PUT", "/v1/models/%s/spec" % ts["id"], spec)
    assert status == 200
    status, m = d.json("GET", "/v1/models/" + ts["id"])
    assert m["has_spec"] is True
    c = run_job(d, {"model": ts["id"], "policy": policy})
    assert c["id"] == b["id"]  # same canonical spec: the same job
    still_serving(d)


# ---- broken and hostile archives ---------------------------------------

def small_archive():
    return archive_bytes(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3)), "script", None)


def scrambled(blob):
    """Garbage where the records are, the zip's directory left intact (the
    upload's structural check refuses it)."""
    bad = bytearray(blob)
    for i in range(64, len(bad) - 2048, 97):
        bad[i] ^= 0x5A
    return bytes(bad)


def corrupt(blob):
    """Every zip structure intact, the contents of the archive's pickles
    (data.pkl, constants.pkl) garbage: only loading it finds out."""
    bad = bytearray(blob)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            if not info.filename.endswith(".pkl"):
                continue
            assert info.compress_type == zipfile.ZIP_STORED
            h = info.header_offset
            name_len, extra_len = struct.unpack("<HH", blob[h + 26:h + 30])
            start = h + 30 + name_len + extra_len
            for i in range(start, start + info.file_size):
                bad[i] ^= 0x5A
    return bytes(bad)


def fake_torchscript_zip():
    """A zip that names a TorchScript archive's files but holds none."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/constants.pkl", b"not a pickle")
        z.writestr("model/data.pkl", b"nor this")
        z.writestr("model/code/__torch__.py", "print('hello')\n")
    return buf.getvalue()


# The reader's time limit (--torchscript-timeout) is a wall-clock deadline:
# on a busy machine libtorch starts and allocates slower, so a test whose
# archive must end some other way (a load error, the memory limit, a
# cancel) sets the largest value and only a test about the time limit sets a
# short one, on an archive that never ends by itself.
NO_TIME_LIMIT = "86400"


@pytest.fixture
def hostile_daemon(daemon_factory):
    return daemon_factory(args=SERIAL + ["--torchscript-timeout", NO_TIME_LIMIT,
                                         "--torchscript-memory", "1536M"]).start()


@pytest.fixture
def timed_daemon(daemon_factory):
    return daemon_factory(args=SERIAL + ["--torchscript-timeout", "3",
                                         "--torchscript-memory", "1536M"]).start()


def fails_with_bad_torchscript(d, blob):
    status, m = d.upload(blob)
    assert status == 201, m
    assert m["format"] == "torchscript", m
    t0 = time.monotonic()
    j = run_job(d, {"model": m["id"], "policy": "budget"})
    secs = time.monotonic() - t0
    assert j["state"] == "failed", j
    assert j["error"]["code"] == "bad_torchscript", j
    msg = j["error"]["message"]
    assert msg and "\n" not in msg, j
    assert j["artifacts"] == [] and j["layers"] == []
    assert tmp_left(d) == [], "reader's work folder left behind"
    still_serving(d)
    return msg, secs


def test_corrupt_archive_fails_its_job(hostile_daemon):
    msg, _ = fails_with_bad_torchscript(hostile_daemon,
                                        corrupt(small_archive()))
    assert msg.startswith("TorchScript load failed: ") and len(msg) > 30, msg


def test_zip_that_is_not_torchscript_fails_its_job(hostile_daemon):
    msg, _ = fails_with_bad_torchscript(hostile_daemon, fake_torchscript_zip())
    assert msg.startswith("TorchScript load failed: ") and len(msg) > 30, msg


def test_what_is_not_a_torchscript_archive_is_refused_at_upload(hostile_daemon):
    d = hostile_daemon
    # a zip with neither constants.pkl nor data.pkl
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello/data.txt", "not a model")
    status, hdrs, body = d.request("POST", "/v1/models", body=buf.getvalue())
    assert status == 422, body
    # an archive cut short (no zip directory to read), and one whose records
    # are garbage
    blob = small_archive()
    for bad in (blob[:len(blob) // 2], scrambled(blob)):
        status, hdrs, body = d.request("POST", "/v1/models", body=bad)
        assert status == 422, body
        assert json.loads(body)["code"] in ("bad_zip", "unknown_format"), body
    assert d.json("GET", "/v1/models")[1] == {"models": []}
    still_serving(d)


def test_archive_that_loops_at_load_fails_its_job(timed_daemon):
    msg, secs = fails_with_bad_torchscript(timed_daemon,
                                           archive_bytes(Spin(), "script", None))
    assert msg == "TorchScript reader exceeded its 3 s time limit", msg
    assert secs >= 3, secs  # not before its limit (it never ends by itself)


def test_archive_that_allocates_without_bound_fails_its_job(hostile_daemon):
    # No time limit in the way: however slowly the machine allocates, only
    # the memory limit can end this reader.
    msg, _ = fails_with_bad_torchscript(hostile_daemon,
                                        archive_bytes(Hog(), "script", None))
    assert "exceeded its memory limit (1536 MiB)" in msg, msg


def test_daemon_serves_on_after_hostile_archives(daemon_factory):
    """All of them queued at once, then a good job: each hostile one fails,
    the good one succeeds."""
    # The archive that loops ends only by the time limit, which all of them
    # share: one far above what reading a small archive takes on a busy
    # machine (about a second), so that only the loop meets it.
    d = daemon_factory(args=SERIAL + ["--torchscript-timeout", "30",
                                      "--torchscript-memory", "1536M"]).start()
    ids = []
    for blob in (corrupt(small_archive()), fake_torchscript_zip(),
                 archive_bytes(Spin(), "script", None),
                 archive_bytes(Hog(), "script", None), small_archive()):
        status, m = d.upload(blob)
        assert status == 201, m
        status, j = d.json("POST", "/v1/jobs",
                           {"model": m["id"], "policy": "budget"})
        assert status == 201, j
        ids.append(j["id"])
    done = [d.wait_job(i) for i in ids]
    assert [j["state"] for j in done] == ["failed"] * 4 + ["succeeded"], done
    assert all(j["error"]["code"] == "bad_torchscript" for j in done[:4])
    assert d.proc.poll() is None
    assert tmp_left(d) == []
    still_serving(d)


def live_readers(daemon):
    """The pids of the daemon's TorchScript readers still alive (its
    children running decompd-ts-reader; a zombie is not alive)."""
    pids = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % e) as f:
                st = f.read()
            exe = os.path.basename(os.readlink("/proc/%s/exe" % e))
        except OSError:
            continue
        state, ppid = st[st.rindex(")") + 2:].split()[:2]
        if (int(ppid) == daemon.proc.pid and state != "Z"
                and exe == "decompd-ts-reader"):
            pids.append(int(e))
    return pids


def reader_of(daemon, job_id):
    """Wait until the job's reader runs; its pids."""
    def running():
        _, j = daemon.json("GET", "/v1/jobs/" + job_id, expect=200)
        assert j["state"] in ("queued", "running"), j
        return live_readers(daemon)
    return wait_until(running, "the reader never started")


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2:].split()[0] != "Z"


def wait_until(cond, what, timeout=300):
    """Poll `cond` until it is true (its value) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_cancel_and_shutdown_stop_the_reader(daemon_factory):
    # No time limit: the looping archive's reader ends only if the cancel or
    # the shutdown stops it.
    d = daemon_factory(args=SERIAL + ["--torchscript-timeout", NO_TIME_LIMIT]).start()
    seen = []
    try:
        status, m = d.upload(archive_bytes(Spin(), "script", None))
        assert status == 201
        status, j = d.json("POST", "/v1/jobs", {"model": m["id"], "policy": "budget"})
        seen += reader_of(d, j["id"])
        status, _ = d.json("POST", "/v1/jobs/%s/cancel" % j["id"])
        assert status == 202
        done = d.wait_job(j["id"])
        assert done["state"] == "cancelled", done
        assert [p for p in seen if alive(p)] == []
        assert tmp_left(d) == []

        # shutdown while the reader runs: the reader is stopped, and the job
        # goes back to the queue (it runs again at the next start)
        status, j2 = d.json("POST", "/v1/jobs",
                            {"model": m["id"], "policy": "vbmf"})
        assert status == 201, j2
        seen += reader_of(d, j2["id"])
        assert d.stop(timeout=300) == 0
        assert [p for p in seen if alive(p)] == []
    finally:
        for p in seen:  # a reader left running would spin on
            if alive(p):
                os.kill(p, 9)
    # a reader's work folder left by a daemon that was killed is removed at
    # the next start
    left = os.path.join(d.tmp_dir(), "decompd-ts-AbC123")
    os.makedirs(left)
    with open(os.path.join(left, "weights.safetensors"), "wb") as f:
        f.write(b"x" * 100)
    d.args = SERIAL + ["--torchscript-timeout", "2"]
    d.start()
    assert not os.path.exists(left)
    again = d.wait_job(j2["id"])
    assert again["state"] == "failed" and again["attempts"] >= 2, again
    assert again["error"]["code"] == "bad_torchscript"
    assert tmp_left(d) == []
