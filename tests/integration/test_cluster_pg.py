"""Several daemons ("nodes") on one PostgreSQL index and one shared data
dir (suite integration-pg, DECOMPD_TEST_INDEX set by pg_server.py): a job
submitted on one node is seen, streamed and downloaded on another; the
queue hands each job to one node; a node killed while running a job loses
it when its lease lapses and another node finishes it with the artifacts
an uninterrupted run makes, while a node starting up leaves a live node's
job alone; two live daemons cannot share a node id; PostgreSQL down at
start is a non-zero exit with a message that names the server but not the
password."""
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest
import torch

from conftest import BIN, TEST_INDEX, Daemon, conv_spec, index_sql

pytestmark = pytest.mark.skipif(not TEST_INDEX, reason="needs DECOMPD_TEST_INDEX "
                                "(a PostgreSQL server: suite integration-pg)")


@pytest.fixture
def cluster(tmp_path):
    """nodes(n, args) -> n daemons on one data dir (so one database), node
    ids n1, n2, …; all stopped at the end."""
    made = []
    shared = tmp_path / "shared"

    def nodes(n, args=(), start=True):
        out = []
        for i in range(len(made) + 1, len(made) + n + 1):
            d = Daemon(shared, args=list(args), env={"DECOMPD_NODE_ID": "n%d" % i})
            d.log_path = str(tmp_path / ("n%d.log" % i))
            made.append(d)
            out.append(d.start() if start else d)
        return out

    yield nodes
    for d in made:
        if d.proc:
            d.stop()


def small_model(seed=5):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def slow_model():
    """A job of several seconds on one worker (test_crash's)."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(512, 512, 3, padding=1, bias=False)
                                for _ in range(12)])
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def long_layer_model():
    """Two layers that take tens of seconds each (test_crash's: the amct
    preset, float64, on a 5120x5120 matrix)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1024, 1024, 5, padding=2, bias=False),
        torch.nn.Conv2d(1024, 1024, 5, padding=2, bias=False))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def submit(d, net, data, policy="amct"):
    status, m = d.upload(data)
    assert status in (200, 201), m
    status, j = d.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net),
                                             "policy": policy})
    assert status in (200, 201), j
    return j["id"]


def artifact_bytes(d, job_id):
    """{name: bytes} of a finished job's artifacts, downloaded from `d`."""
    _, j = d.json("GET", "/v1/jobs/" + job_id, expect=200)
    out = {}
    for a in j["artifacts"]:
        status, _, body = d.request("GET", "/v1/jobs/%s/artifacts/%s" % (job_id, a["name"]))
        assert status == 200, (a, body[:200])
        assert "sha256:" + hashlib.sha256(body).hexdigest() == a["digest"], a
        out[a["name"]] = body
    return out


def comparable(name, body):
    """An artifact as two runs of the same work must agree on it: the
    weights byte for byte (a .pth by its tensors: its zip's folder prefix
    is the output file's stem, which names the job, and the reference run
    is another job); the info file without its timings."""
    if name.endswith(".pth"):
        sd = torch.load(io.BytesIO(body), weights_only=True)
        return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                + str(tuple(v.shape)) for k, v in sd.items()}
    if not name.endswith(".json"):
        return hashlib.sha256(body).hexdigest()
    doc = json.loads(body)

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items()
                    if not any(w in k for w in ("second", "time", "rss", "date",
                                                "created", "host", "threads"))}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    return strip(doc)


def wait_running_on(d, job_id, node, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = index_sql(d, "SELECT state, lease_node FROM jobs WHERE id=?", (job_id,))
        if rows == [("running", node)]:
            _, j = d.json("GET", "/v1/jobs/" + job_id, expect=200)
            if j["progress"]["layers_done"] >= 1:
                return j
        time.sleep(0.05)
    raise AssertionError("job %s never ran on %s: %s" % (job_id, node, rows))


def test_a_job_submitted_on_one_node_is_streamed_and_downloaded_on_another(cluster):
    n1, n2 = cluster(2, args=["--workers", "1"])
    net, data = small_model()
    job_id = submit(n1, net, data, policy="budget")
    # visible on node 2 at once, and its event stream follows it to the end
    _, j = n2.json("GET", "/v1/jobs/" + job_id, expect=200)
    assert j["id"] == job_id
    _, events = n2.events(job_id)
    assert events and events[-1][0] == "job", events
    last = events[-1][1]
    assert last["state"] == "succeeded", last
    assert [e["state"] for _, e in events][0] in ("queued", "running", "succeeded")
    # the artifacts (blobs in the shared data dir) download from either node
    assert artifact_bytes(n2, job_id) == artifact_bytes(n1, job_id)
    # and the model list is the same everywhere
    assert n1.json("GET", "/v1/models", expect=200)[1] == n2.json("GET", "/v1/models",
                                                                 expect=200)[1]


def test_a_submit_on_one_node_wakes_an_idle_worker_on_another_at_once(cluster):
    """LISTEN/NOTIFY: node 1's only worker is busy; each job submitted on
    node 1 is claimed by node 2's idle worker within a fraction of the
    workers' one-second poll (their mean wait over several jobs would be
    about half a second without the notification). Only the jobs that
    started while node 1's long job still ran count (on a quiet machine it
    may end before the last of them): at least three must. Jobs run whole
    here (spread_jobs = no): spread, node 1's long job would keep node 2
    busy with its tasks."""
    (n1,) = cluster(1, args=["--workers", "1", "--spread-jobs", "no"])
    net, data = long_layer_model()
    busy = submit(n1, net, data)
    deadline = time.monotonic() + 300
    while index_sql(n1, "SELECT lease_node FROM jobs WHERE id=?", (busy,)) != [("n1",)]:
        assert time.monotonic() < deadline, "the long job never started"
        time.sleep(0.05)
    (n2,) = cluster(1, args=["--workers", "1", "--spread-jobs", "no"])
    time.sleep(1.5)  # node 2's worker has polled and is waiting
    waits, rng = [], random.Random(7)
    for seed in range(6):
        if index_sql(n1, "SELECT state FROM jobs WHERE id=?", (busy,)) != [("running",)]:
            break  # node 1 is free again: what follows proves nothing
        net, data = small_model(seed=200 + seed)
        job_id = submit(n1, net, data, policy="budget")
        j = n2.wait_job(job_id)
        assert j["state"] == "succeeded", j
        ((started, created),) = index_sql(
            n2, "SELECT started_at, created_at FROM jobs WHERE id=?", (job_id,))
        ((busy_end,),) = index_sql(
            n1, "SELECT COALESCE(finished_at, 0) FROM jobs WHERE id=?", (busy,))
        if busy_end and busy_end <= started:
            break  # claimed after node 1's long job ended: either node could
        assert j["node"] == "n2", "node 2 did not run %s: %s" % (job_id, j)
        waits.append(started - created)
        time.sleep(rng.uniform(0, 0.5))  # not in step with node 2's polls
    assert len(waits) >= 3, "node 1's long job ended too soon: %s" % waits
    assert sum(waits) / len(waits) < 200, waits


def test_each_job_is_claimed_by_one_node_once(cluster):
    n1, n2 = cluster(2, args=["--workers", "2"])
    ids = []
    for seed in range(6):
        net, data = small_model(seed=100 + seed)
        ids.append(submit(n1 if seed % 2 else n2, net, data, policy="budget"))
    nodes_seen = set()
    for job_id in ids:
        j = n1.wait_job(job_id)
        assert j["state"] == "succeeded", j
        assert j["attempts"] == 1, j  # no job was claimed twice
    for d in (n1, n2):
        for line in d.log().splitlines():
            if "event=job_end" in line and "state=succeeded" in line:
                nodes_seen.add(d.env["DECOMPD_NODE_ID"])
    assert sum(d.log().count("event=job_end") for d in (n1, n2)) == len(ids)
    assert nodes_seen, "no node ran a job"


def test_a_killed_nodes_job_is_reclaimed_and_ends_as_an_uninterrupted_run(cluster, tmp_path):
    # the reference: the same job, uninterrupted, on a daemon of its own
    ref = Daemon(tmp_path / "ref", args=["--workers", "1"]).start()
    try:
        net, data = slow_model()
        ref_id = submit(ref, net, data)
        done = ref.wait_job(ref_id, timeout=900)
        assert done["state"] == "succeeded", done
        want = {k: comparable(k, v) for k, v in artifact_bytes(ref, ref_id).items()}
    finally:
        ref.stop()

    (n1,) = cluster(1, args=["--workers", "1", "--lease-seconds", "2"])
    job_id = submit(n1, net, data)
    wait_running_on(n1, job_id, "n1")
    # a node starting now leaves the live node's job alone
    (n2,) = cluster(1, args=["--workers", "1", "--lease-seconds", "2"])
    assert "requeued=0" in n2.log(), n2.log()
    time.sleep(3)  # over a lease: node 1's heartbeat keeps it
    assert index_sql(n2, "SELECT state, lease_node FROM jobs WHERE id=?",
                     (job_id,)) == [("running", "n1")]
    n1.kill9()
    # node 2 claims it once the lease lapses and runs it to the end
    done = n2.wait_job(job_id, timeout=900)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2, done
    assert done["progress"]["layers_done"] == 12 and len(done["layers"]) == 12
    got = {k: comparable(k, v) for k, v in artifact_bytes(n2, job_id).items()}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    assert index_sql(n2, "SELECT lease_node FROM jobs WHERE id=?", (job_id,)) == [("",)]


def test_a_node_that_lost_its_lease_stops_and_writes_nothing_over_the_new_run(cluster):
    """Node 1 freezes (SIGSTOP) with a job: its lease lapses, node 2 takes
    the job over; node 1, thawed, finds the job is no longer its own at its
    next progress report, stops it and writes nothing (no progress, no end)
    over node 2's run, and serves on."""
    (n1,) = cluster(1, args=["--workers", "1", "--lease-seconds", "2"])
    net, data = slow_model()
    job_id = submit(n1, net, data)
    wait_running_on(n1, job_id, "n1")
    n1.proc.send_signal(signal.SIGSTOP)
    try:
        (n2,) = cluster(1, args=["--workers", "1", "--lease-seconds", "2"])
        wait_running_on(n2, job_id, "n2")
    finally:
        n1.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 300
    while not any(job_id in line and "event=job_end" in line
                  for line in n1.log().splitlines()):
        assert time.monotonic() < deadline, "node 1 never stopped the job"
        time.sleep(0.1)
    # still node 2's, running, until it ends it
    done = n2.wait_job(job_id, timeout=900)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert done["progress"]["layers_done"] == 12 and len(done["layers"]) == 12
    assert n1.json("GET", "/readyz")[0] == 200


def test_a_restarted_node_requeues_its_own_dead_job_at_once(cluster):
    (n1,) = cluster(1, args=["--workers", "1", "--lease-seconds", "600"])
    net, data = slow_model()
    job_id = submit(n1, net, data)
    wait_running_on(n1, job_id, "n1")
    n1.kill9()
    n1.start()  # same node id: its dead incarnation's job, lease or not
    assert "requeued=1" in n1.log()
    done = n1.wait_job(job_id, timeout=900)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done


def test_a_starting_node_empties_its_own_temp_folder_only(cluster):
    (n1,) = cluster(1)
    (n2,) = cluster(1, start=False)
    ours = os.path.join(n1.tmp_dir(), "upload-0123456789abcdef01234567")
    with open(ours, "wb") as f:  # node 1 writing an upload
        f.write(b"\0" * 4096)
    os.makedirs(n2.tmp_dir(), exist_ok=True)
    left = os.path.join(n2.tmp_dir(), ".j_0123456789abcdef-out.pth.tmp-Ab3dE9")
    with open(left, "wb") as f:  # what a killed node 2 left
        f.write(b"\0" * 4096)
    n2.start()
    assert os.path.exists(ours), "node 2 emptied node 1's temp folder"
    assert not os.path.exists(left)
    assert n1.tmp_dir() != n2.tmp_dir()


def test_two_live_daemons_cannot_share_a_node_id(cluster, tmp_path):
    (n1,) = cluster(1)
    twin = Daemon(n1.data_dir, env={"DECOMPD_NODE_ID": "n1"})
    twin.log_path = str(tmp_path / "twin.log")
    with pytest.raises(RuntimeError) as e:
        twin.start()
    assert "as node 'n1'" in str(e.value), e.value
    assert n1.json("GET", "/readyz", expect=200)[1]["status"] == "ready"


def test_postgresql_down_at_start_exits_non_zero_naming_the_server(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = "postgresql://decompd:s3cret-pw@127.0.0.1:%d/nowhere" % port
    env = dict(os.environ)
    env.pop("DECOMPD_INDEX", None)
    r = subprocess.run([BIN, "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
                        "--index", uri], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode != 0
    assert "event=store_open_failed" in r.stderr, r.stderr
    assert "127.0.0.1:%d" % port in r.stderr, r.stderr
    assert "s3cret-pw" not in r.stderr, r.stderr
    assert "event=listening" not in r.stderr


def test_readyz_fails_while_postgresql_is_down_and_recovers_after(tmp_path):
    """A server of its own, stopped under a running daemon: /readyz answers
    503 while it is away (naming the server in the log, never in the
    answer) and 200 again once it is back (the pooled connections it broke
    are replaced), and the daemon serves on."""
    import pg_server
    pg = pg_server.PgServer().start()
    try:
        pg_server.create_database(pg.uri, "solo")
        d = Daemon(tmp_path / "solo", env={"DECOMPD_INDEX": pg.uri + "/solo"}).start()
        try:
            net, data = small_model(seed=9)
            status, m = d.upload(data)
            assert status == 201, m
            assert d.json("GET", "/readyz")[0] == 200
            pg.stop()
            status, body = d.json("GET", "/readyz")
            assert status == 503
            # open to anyone: the answer never names the database server
            assert str(pg.port) not in json.dumps(body)
            assert "event=not_ready" in d.log()
            assert d.json("GET", "/v1/models/" + m["id"])[0] >= 500
            pg.resume()
            assert d.json("GET", "/readyz")[0] == 200
            assert d.json("GET", "/v1/models/" + m["id"], expect=200)[1]["id"] == m["id"]
        finally:
            d.stop()
    finally:
        pg.cleanup()


def wait_task_on(d, job_id, node, timeout=300):
    """Until `node` runs a task of the job: its (stage, index, attempts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = index_sql(d, "SELECT stage, idx, attempts FROM job_tasks WHERE "
                         "job_id=? AND state='running' AND lease_node=?",
                         (job_id, node))
        if rows:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError("node %s never ran a task of %s" % (node, job_id))


def released(d, job_id):
    return [line for line in d.log().splitlines()
            if "req=%s event=task_end" % job_id in line and "state=released" in line]


def test_a_spread_jobs_tasks_go_back_on_sigterm_and_stop_on_cancel_on_every_node(cluster):
    """A job of two long layers, one spectra task each, spread over the
    nodes: node 2 stopping (SIGTERM) mid-task gives its task back to the
    queue at once (not at its lease's end), where node 3, starting, claims
    it (attempt 2) while node 1 runs the other; cancelling the job then
    stops the tasks on nodes 1 and 3 within seconds: the job ends
    cancelled, no task is left running, their records are dropped."""
    (n1,) = cluster(1, args=["--workers", "1", "--lease-seconds", "600"])
    net, data = long_layer_model()
    job_id = submit(n1, net, data)
    wait_task_on(n1, job_id, "n1")
    (n2,) = cluster(1, args=["--workers", "1", "--lease-seconds", "600"])
    stage, idx, attempts = wait_task_on(n2, job_id, "n2")
    assert attempts == 1
    time.sleep(0.5)  # mid-layer
    n2.stop()
    assert released(n2, job_id), n2.log()
    assert index_sql(n1, "SELECT state, attempts, lease_node FROM job_tasks "
                     "WHERE job_id=? AND stage=? AND idx=?",
                     (job_id, stage, idx)) == [("queued", 1, "")]
    (n3,) = cluster(1, args=["--workers", "1", "--lease-seconds", "600"])
    assert wait_task_on(n3, job_id, "n3") == (stage, idx, 2)
    wait_task_on(n1, job_id, "n1")  # still at its own
    t0 = time.monotonic()
    status, _ = n3.json("POST", "/v1/jobs/%s/cancel" % job_id)
    assert status in (200, 202), status
    done = n1.wait_job(job_id, timeout=120)
    assert done["state"] == "cancelled", done
    deadline = time.monotonic() + 60
    while index_sql(n1, "SELECT COUNT(*) FROM job_tasks WHERE job_id=? AND "
                    "(state='running' OR result IS NOT NULL)", (job_id,)) != [(0,)]:
        assert time.monotonic() < deadline, index_sql(
            n1, "SELECT stage, idx, state, lease_node, result FROM job_tasks "
            "WHERE job_id=?", (job_id,))
        time.sleep(0.1)
    assert time.monotonic() - t0 < 60
    assert released(n1, job_id) and released(n3, job_id)
