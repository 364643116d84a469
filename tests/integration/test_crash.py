"""Crashes and restarts: a job running when the daemon is killed runs again
after restart and completes; an upload cut by kill -9 leaves no blob and no
row and can be repeated; a restart removes every temp file a killed daemon
can leave; SIGTERM requeues at the layer boundary and exits cleanly; a
database newer than the binary is refused."""
import io
import os
import signal
import socket
import time

import torch

from conftest import TEST_INDEX, conv_spec, index_sql


def slow_model():
    """A model whose job (the amct preset: every layer's spectrum and
    factors in float64) takes several seconds on one worker."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(512, 512, 3, padding=1, bias=False)
                                for _ in range(12)])
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def submit_slow_job(d):
    net, data = slow_model()
    status, m = d.upload(data)
    assert status == 201, m
    status, j = d.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net),
                                             "policy": "amct"})
    assert status == 201, j
    return j["id"]


def wait_running(d, job_id, timeout=600):
    """Wait until the engine is at work on the job (it has reported from
    inside a layer or finished one) with work still ahead; the job. The
    caller acts at once: the model's jobs last seconds, a check far less."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, j = d.json("GET", "/v1/jobs/" + job_id, expect=200)
        p = j["progress"]
        if j["state"] == "running" and (p["current"] or p["layers_done"]):
            assert p["layers_done"] < p["layers_total"], j
            return j
        assert j["state"] in ("queued", "running"), j
        time.sleep(0.02)
    raise AssertionError("job never ran")


def test_kill9_during_job_then_restart_completes(daemon_factory):
    d = daemon_factory(args=["--workers", "1"]).start()
    job_id = submit_slow_job(d)
    wait_running(d, job_id)
    d.kill9()
    d.start()
    assert "requeued=1" in d.log()
    done = d.wait_job(job_id)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["progress"]["layers_done"] == 12 and len(done["layers"]) == 12
    assert len(done["artifacts"]) == 3


def test_sigterm_requeues_at_layer_boundary(daemon_factory):
    d = daemon_factory(args=["--workers", "1"]).start()
    job_id = submit_slow_job(d)
    wait_running(d, job_id)
    # The stop waits for the layer boundary, not the job: the job is queued.
    assert d.stop(signal.SIGTERM, timeout=300) == 0
    log = d.log()
    assert "event=stopped status=0" in log and "state=queued" in log, log[-2000:]
    assert index_sql(d, "SELECT state FROM jobs WHERE id=?", (job_id,)) == [("queued",)]
    d.start()
    assert d.wait_job(job_id)["state"] == "succeeded"


def test_cancel_running_job_at_layer_boundary(daemon_factory):
    d = daemon_factory(args=["--workers", "1"]).start()
    job_id = submit_slow_job(d)
    wait_running(d, job_id)
    status, j = d.json("POST", "/v1/jobs/%s/cancel" % job_id)
    assert status == 202 and j["cancel_requested"], j
    done = d.wait_job(job_id)
    assert done["state"] == "cancelled", done
    assert done["artifacts"] == []
    assert d.request("GET", "/v1/jobs/%s/artifacts/decompose_info.json" % job_id)[0] == 409
    status, _ = d.json("POST", "/v1/jobs/%s/cancel" % job_id)
    assert status == 200
    assert d.request("DELETE", "/v1/jobs/" + job_id)[0] == 204


def submit_one_long_layer(d):
    """A job of one layer that takes several seconds by itself: the amct
    preset (float64) on a 1024->1024 5x5 conv (a 5120x5120 matrix)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(1024, 1024, 5, padding=2,
                                              bias=False))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    status, m = d.upload(buf.getvalue())
    assert status == 201, m
    status, j = d.json("POST", "/v1/jobs", {"model": m["id"],
                                             "spec": conv_spec(net),
                                             "policy": "amct"})
    assert status == 201, j
    return j["id"]


def test_sigterm_and_cancel_land_inside_a_long_layer(daemon_factory):
    """The engine reports from inside a long layer, so shutdown and cancel
    do not wait for the layer to end: the job is requeued (then cancelled)
    with its only layer not done."""
    d = daemon_factory(args=["--workers", "1"]).start()
    job_id = submit_one_long_layer(d)
    wait_running(d, job_id)
    assert d.stop(signal.SIGTERM, timeout=300) == 0
    assert index_sql(d, "SELECT state FROM jobs WHERE id=?", (job_id,)) == [("queued",)]
    d.start()
    j = wait_running(d, job_id)
    assert j["progress"]["layers_done"] == 0, j
    # GET /v1/jobs/{id} says where the job is inside the layer, and the
    # share done rises through each step.
    seen, deadline = [], time.monotonic() + 600
    while len(set(seen)) < 3 and time.monotonic() < deadline:
        _, j = d.json("GET", "/v1/jobs/" + job_id, expect=200)
        assert j["state"] == "running", j
        cur = j["progress"]["current"]
        assert cur is not None and cur["layer"] == "0", j
        assert j["progress"]["layers_total"] == 1, j
        assert cur["step"] in ("spectrum", "factors") and 0 <= cur["fraction"] < 1
        seen.append((cur["step"] == "factors", cur["fraction"]))
        time.sleep(0.05)
    assert len(set(seen)) >= 3 and seen == sorted(seen), seen
    status, j = d.json("POST", "/v1/jobs/%s/cancel" % job_id)
    assert status == 202, j
    done = d.wait_job(job_id)
    assert done["state"] == "cancelled", done
    assert done["progress"]["layers_done"] == 0 and done["layers"] == [], done
    assert done["progress"]["current"] is None


def test_sigterm_with_event_streams_open_ends_them_and_exits(daemon_factory):
    """Open live-event streams park their connections between events; a
    SIGTERM ends them (resumed before the HTTP server stops, as MHD asks):
    exit 0, every stream closed, each after at least one event."""
    import threading
    d = daemon_factory(args=["--workers", "1"]).start()
    job_id = submit_one_long_layer(d)
    wait_running(d, job_id)
    got, first = [], threading.Semaphore(0)

    def follow():
        c = d.conn(300)
        try:
            c.request("GET", "/v1/jobs/%s/events" % job_id)
            r = c.getresponse()
            n = 0
            while True:
                try:
                    line = r.readline()
                except Exception:  # cut mid-stream by the stop
                    break
                if not line:
                    break
                if line.startswith(b"event: job"):
                    n += 1
                    if n == 1:
                        first.release()
            got.append(n)
        finally:
            c.close()

    threads = [threading.Thread(target=follow) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in threads:
        assert first.acquire(timeout=300), "a stream gave no first event"
    # Most likely parked between events by now (if not, the stop must end
    # them all the same: what is checked holds either way).
    time.sleep(0.6)
    assert d.stop(signal.SIGTERM, timeout=300) == 0
    for t in threads:
        t.join(300)
        assert not t.is_alive()
    assert len(got) == 3 and min(got) >= 1, got


def files_under(d, sub):
    return [f for _, _, fs in os.walk(os.path.join(d.data_dir, sub)) for f in fs]


def test_kill9_during_upload_leaves_nothing(daemon_factory):
    d = daemon_factory().start()
    _, data = slow_model()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=300)
    s.sendall(b"POST /v1/models HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data))
    s.sendall(data[:len(data) // 3])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        tmp = d.tmp_dir()
        sizes = [os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)]
        if sizes and max(sizes) > 1 << 20:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("upload never reached the temp file")
    d.kill9()
    s.close()
    assert files_under(d, "blobs") == []
    assert index_sql(d, "SELECT COUNT(*) FROM models") == [(0,)]
    d.start()
    assert files_under(d, "tmp") == []  # the leftover temp file is gone
    assert d.json("GET", "/v1/models", expect=200)[1] == {"models": []}
    status, m = d.upload(data)
    assert status == 201 and m["size"] == len(data)
    assert len(files_under(d, "blobs")) == 1


def test_database_newer_than_binary_is_refused(daemon_factory):
    d = daemon_factory().start()
    assert d.stop() == 0
    index_sql(d, "UPDATE schema_version SET version=9999" if TEST_INDEX
              else "PRAGMA user_version=9999")
    try:
        d.start()
    except RuntimeError as e:
        assert "code=db_too_new" in str(e), e
    else:
        raise AssertionError("started on a newer database")


def test_one_daemon_per_data_dir(daemon_factory):
    d = daemon_factory().start()
    other = daemon_factory()
    other.data_dir = d.data_dir
    other.log_path = d.log_path + ".2"
    try:
        other.start()
    except RuntimeError as e:
        assert "another decompd" in str(e), e
    else:
        raise AssertionError("two daemons on one data dir")


def test_restart_removes_every_temp_file_a_killed_daemon_can_leave(daemon_factory):
    """What a kill -9 leaves in DATA_DIR/tmp, planted under the names the
    daemon gives them: an upload, a job's output and the engine's dot-named
    temp file behind it (as large as the output; the start-up cleanup used
    to skip dot-names, so it stayed for good), a TorchScript work folder,
    dot-named folders too. A restart removes them all; blobs are kept."""
    d = daemon_factory().start()
    torch.manual_seed(4)
    buf = io.BytesIO()
    torch.save(torch.nn.Conv2d(32, 64, 3).state_dict(), buf)
    data = buf.getvalue()
    status, m = d.upload(data)
    assert status == 201, m
    assert d.stop() == 0
    tmp = d.tmp_dir()
    job = "j_0123456789abcdef"
    planted = {
        ".%s-out.pth.tmp-Ab3dE9" % job: 4 << 20,
        ".%s-out.safetensors.tmp-x1Y2z3" % job: 1 << 20,
        "%s-out.json" % job: 100,
        "upload-0123456789abcdef01234567": 1 << 20,
        ".hidden": 10,
    }
    for name, size in planted.items():
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(b"\0" * size)
    for folder in ("decompd-ts-Qw3rTy", ".decompd-ts-.x"):
        os.makedirs(os.path.join(tmp, folder, "sub"))
        with open(os.path.join(tmp, folder, "sub", ".weights.safetensors"), "wb") as f:
            f.write(b"\0" * 1000)
    assert len(os.listdir(tmp)) == len(planted) + 2
    d.start()
    assert os.listdir(tmp) == []
    assert len(files_under(d, "blobs")) == 1
    assert d.json("GET", "/v1/models/" + m["id"], expect=200)[1]["size"] == len(data)
