"""The pipeline story against the real daemon: a shell script uploads,
submits and waits with decompctl; a training script then pulls the result
onto a fresh model with decompd.client and takes a fine-tuning step."""
import json
import os
import subprocess
import sys
import textwrap
import time

from conftest import DECOMPCTL, SmallNet, client_env, ctl, url_of

PIPELINE_SH = r"""#!/bin/bash
set -euo pipefail
model=$("$DECOMPCTL" upload weights.pth --name smallnet)
job=$("$DECOMPCTL" submit "$model" --spec spec.json --policy budget)
"$DECOMPCTL" wait "$job" --timeout 300
"$DECOMPCTL" status "$job" --json > status.json
echo "$job" > job.txt
"""

TRAIN_PY = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from conftest import SmallNet
from decompd.client import Client

job = open("job.txt").read().strip()
model = SmallNet.make(seed=123)          # fresh: other init, not the uploaded
original = SmallNet.make(seed=0)         # what was uploaded, for comparison
model, changes = Client().pull(model, job)
assert changes, changes
for name, parts in changes.items():
    seq = model.get_submodule(name)
    assert isinstance(seq, torch.nn.Sequential) and len(seq) == 2, name
    assert parts == [name + ".0", name + ".1"]
x = torch.randn(8, 3, 16, 16)
model.eval(); original.eval()
with torch.no_grad():
    rel = ((model(x) - original(x)).norm() / original(x).norm()).item()
model.train()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
before = {k: v.clone() for k, v in model.state_dict().items()}
y = torch.randint(0, 10, (8,))
loss = torch.nn.functional.cross_entropy(model(x), y)
loss.backward()
opt.step()
moved = [k for k, v in model.state_dict().items()
         if v.dtype.is_floating_point and not torch.equal(v, before[k])]
assert torch.isfinite(loss) and any(k.endswith(".0.weight") for k in moved)
print(json.dumps({"changes": changes, "loss": loss.item(), "rel": rel,
                  "moved": len(moved)}))
"""


def test_shell_pipeline_then_training_pull(daemon, tmp_path):
    SmallNet.write(tmp_path)
    (tmp_path / "pipeline.sh").write_text(PIPELINE_SH)
    env = dict(os.environ)
    env.update(client_env(daemon, tmp_path / "cache"))
    env["DECOMPCTL"] = DECOMPCTL
    r = subprocess.run(["bash", "pipeline.sh"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    job = (tmp_path / "job.txt").read_text().strip()
    assert job.startswith("j_")
    # Not a terminal: plain progress lines, the last one final.
    assert "succeeded" in r.stderr.splitlines()[-1], r.stderr
    assert "\r" not in r.stderr
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["state"] == "succeeded" and st["id"] == job
    assert {a["name"] for a in st["artifacts"]} == {
        "decomposed_weights.pth", "decomposed_weights.safetensors",
        "decompose_info.json"}

    (tmp_path / "train.py").write_text(TRAIN_PY)
    r = subprocess.run([sys.executable, "train.py", os.path.dirname(__file__)],
                       cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["changes"] and out["moved"] > 0
    # The decomposed model approximates the uploaded one (budget: 2x MACs).
    assert out["rel"] < 0.5, out
    # The cache holds the job record and verified blobs.
    rec = json.loads((tmp_path / "cache" / "jobs" / (job + ".json")).read_text())
    assert rec["format"] == "decompd.cache.job" and rec["version"] == 1
    assert rec["server"] == url_of(daemon)
    assert len(rec["artifacts"]) == 3
    for name in ("decomposed_weights.pth", "decompose_info.json"):  # pulled
        a = rec["artifacts"][name]
        h = a["digest"][7:]
        p = tmp_path / "cache" / "blobs" / "sha256" / h[:2] / h
        assert p.stat().st_size == a["size"], name


def test_cli_verbs_json_jobs_and_cancel(daemon_factory, tmp_path):
    import io
    import torch
    import torchvision
    d = daemon_factory().start()
    env = client_env(d, tmp_path / "cache")
    # resnet18 keeps the one worker busy for a while: the second job queues.
    buf = io.BytesIO()
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    from decompd.spec import layer_spec, walk
    (tmp_path / "r18.json").write_text(json.dumps(layer_spec(walk(net))))
    r = ctl("upload", tmp_path / "r18.pth", "--json", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["id"].startswith("m_") and m["format"] == "pth"
    r = ctl("submit", m["id"], "--spec", tmp_path / "r18.json", "--policy",
            "vbmf", "--json", env=env)
    assert r.returncode == 0, r.stderr
    busy = json.loads(r.stdout)["id"]
    r = ctl("submit", m["id"], "--spec", tmp_path / "r18.json", "--policy",
            '{"name": "energy", "energy": 0.9}', env=env)
    assert r.returncode == 0, r.stderr
    queued = r.stdout.strip()
    r = ctl("jobs", "--json", env=env)
    assert r.returncode == 0, r.stderr
    ids = [j["id"] for j in json.loads(r.stdout)["jobs"]]
    assert ids[:2] == [queued, busy]
    r = ctl("jobs", "--limit", "1", env=env)
    assert r.stdout.startswith(queued) and "next:" in r.stderr
    r = ctl("cancel", queued, env=env)
    assert r.returncode == 0 and "cancelled" in r.stdout, (r.stdout, r.stderr)
    r = ctl("wait", queued, env=env)
    assert r.returncode == 9 and "cancelled" in r.stderr, (r.returncode, r.stderr)
    r = ctl("fetch", queued, env=env)
    assert r.returncode == 1 and "cancelled" in r.stderr
    # A wait that runs out of time: exit 11, the job goes on.
    r = ctl("wait", busy, "--timeout", "0.05", env=env)
    if r.returncode != 0:  # (unless it finished already)
        assert r.returncode == 11 and "still" in r.stderr, (r.returncode, r.stderr)
    r = ctl("wait", busy, "--timeout", "600", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "succeeded"
    # Usage errors are 2; --help is 0 and lists the exit codes.
    assert ctl("wait", env=env).returncode == 2
    h = ctl("--help")
    assert h.returncode == 0
    for code in ("6 ", "7 ", "8 ", "9 ", "10 ", "11 "):
        assert "\n  " + code in h.stdout, code


def on_a_terminal(argv, env):
    """Run argv with stderr on a pty; (exit code, stdout, stderr bytes)."""
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out, _ = p.communicate(timeout=120)
    err = b""
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        err += b
    os.close(master)
    return p.returncode, out, err


def test_wait_and_fetch_draw_a_bar_on_a_terminal(daemon, tmp_path):
    """On a terminal (a pty here) wait and fetch redraw one bar line with
    \\r; stdout still carries only the result."""
    from conftest import run_job
    job = run_job(daemon, tmp_path)
    env = dict(os.environ)
    env.update(client_env(daemon, tmp_path / "tty-cache"))
    for verb in ("wait", "fetch"):
        code, out, err = on_a_terminal([DECOMPCTL, verb, job], env)
        assert code == 0, err
        assert b"\r[" in err and b"#" in err, err
        assert b"\r" not in out


def test_wait_shows_where_a_long_layer_is(daemon, tmp_path):
    """A job on one long layer (amct, float64, 1024->1024 5x5): decompctl
    wait on a terminal and the Python client both say which layer the
    engine is in, its step and the share done, before the layer ends."""
    import re
    import torch
    from decompd.client import Client
    from decompd.spec import layer_spec, walk
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(1024, 1024, 5, padding=2,
                                              bias=False))
    torch.save(net.state_dict(), tmp_path / "big.pth")
    (tmp_path / "big.json").write_text(json.dumps(layer_spec(walk(net))))
    env = dict(os.environ)
    env.update(client_env(daemon, tmp_path / "cache"))
    r = ctl("submit", tmp_path / "big.pth", "--spec", tmp_path / "big.json",
            "--policy", "amct", env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    c = Client(url_of(daemon), cache=str(tmp_path / "cache"))
    deadline, j = time.time() + 120, None
    while time.time() < deadline:
        j = c.job(job)
        if j.current:
            break
        time.sleep(0.1)
    assert j.state == "running" and j.layers_done == 0, j
    assert j.current["layer"] == "0" and j.current["step"] in (
        "spectrum", "factors") and 0 <= j.current["fraction"] < 1, j.current
    code, _, err = on_a_terminal([DECOMPCTL, "wait", job, "--timeout", "2"],
                                 env)
    assert code == 11, err  # still running when the wait gave up
    assert re.search(rb"running 0/1 layers [0-9.]+ s, 0: (spectrum|factors) "
                     rb"\d+%", err), err
    assert ctl("cancel", job, env=env).returncode == 0


def test_wait_follows_the_event_stream_instead_of_polling(daemon, tmp_path):
    """Client.wait and decompctl wait read the job's live events: one
    stream request each, then one GET of the finished job (artifacts
    included), where polling a job of this length would have asked several
    times."""
    import torchvision
    from decompd.client import Client
    torch_seed = __import__("torch").manual_seed
    torch_seed(0)
    net = torchvision.models.resnet18()
    c = Client(url_of(daemon), cache=str(tmp_path / "cache"))
    job = c.submit(net, policy={"name": "energy", "energy": 0.9})
    j = c.wait(job, progress=False)
    assert j.state == "succeeded" and j.artifacts, j
    asked_once(daemon, j.id)
    # decompctl wait on a job still running: the same pattern.
    job2 = c.submit(net, policy="amct")
    r = ctl("wait", job2.id, "--json",
            env=client_env(daemon, tmp_path / "cache2"))
    assert r.returncode == 0 and json.loads(r.stdout)["artifacts"], r.stderr
    asked_once(daemon, job2.id)


def asked_once(daemon, job_id):
    """The daemon's log has one events stream and one GET for the job."""
    path = "/v1/jobs/%s" % job_id
    deadline = time.time() + 10  # a request is logged once its connection
    while time.time() < deadline:  # is done, which trails the reply a bit
        log = daemon.log()
        # both lines: the GET follows the stream's end, and its line can
        # trail the stream's on a busy machine
        if 'path="%s/events"' % path in log and \
                'method=GET path="%s" ' % path in log:
            break
        time.sleep(0.05)
    assert log.count('path="%s/events"' % path) == 1, log[-3000:]
    assert log.count('method=GET path="%s" ' % path) == 1, log[-3000:]
