"""Three decompd nodes sharing a real PostgreSQL (index and queue) and one
blob store — an S3-compatible server (s3rver behind the SigV4 checker), or
a folder the nodes share (`blobs = file:`) — each node with a data dir of
its own, one worker each (blas_threads 1, as the single-node reference).

A resnet50 job uploaded to and submitted on node 1 is spread over the
nodes as tasks (groups of layers' spectra, the plan, groups of layers'
factors), and survives kill -9 of its coordinator in the middle of a task
of its own: the task is claimed again by another node when its lease
lapses, and so is the job, whose new coordinator goes on from the records
there are. Its artifacts are byte for byte those of the embedded
single-node run of the same job; the tasks ran on more than one node,
each layer in exactly one task of each stage (no result used twice); every
blob in the store is named by its SHA-256, and once the job has ended the
task records are gone from it (only the model and the artifacts remain)
and from the nodes' own folders (with S3, where each node keeps copies);
node 3's /events stream follows the whole job; 200 concurrent status
requests spread over the nodes all succeed; /v1/nodes lists the three
nodes. Node 3 joins once the job is claimed, so that the node killed is
never the one streaming."""
import concurrent.futures
import hashlib
import io
import json
import os
import re
import sys
import threading
import time
import urllib.request

import pytest
import torch
import torchvision

from conftest import Daemon, conv_spec

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "s3"))
import pg_server  # noqa: E402
from s3rver import ACCESS_KEY, SECRET_KEY, S3rver  # noqa: E402

BUCKET = "decompd-cluster"
LEASE = 3


@pytest.fixture(scope="module")
def servers():
    pg = pg_server.PgServer()
    pg.start()
    s3 = S3rver([BUCKET])
    try:
        s3.start()
        yield pg, s3
    finally:
        s3.stop()
        pg.stop()


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), conv_spec(model)


POLICY = {"name": "budget", "macs_reduction": 2.0}
NODE_ARGS = ["--workers", "1", "--blas-threads", "1"]


def cluster_args(tmp_path, pg, s3, kind):
    """The settings every node of the cluster shares, and its database."""
    db = "c_" + kind + "_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    pg_server.create_database(pg.uri, db)
    if kind == "s3":
        blobs = ["--blobs", "s3://%s/%s" % (BUCKET, db),
                 "--s3-endpoint", s3.endpoint,
                 "--s3-access-key-id", ACCESS_KEY,
                 "--s3-secret-access-key", SECRET_KEY]
    else:
        blobs = ["--blobs", "file:%s" % (tmp_path / "shared-blobs")]
    return NODE_ARGS + ["--index", pg.uri + "/" + db,
                        "--lease-seconds", str(LEASE)] + blobs, db


def node(tmp_path, args, i):
    """Node i of the cluster, with a data dir of its own."""
    return Daemon(tmp_path / ("node%d" % i),
                  args + ["--node-id", "node%d" % i]).start()


def blobs_in_store(kind, s3, db, tmp_path):
    """{hex digest: bytes} of every blob in the shared store."""
    out = {}
    if kind == "s3":
        url = "%s/%s?list-type=2&prefix=%s/" % (s3.direct, BUCKET, db)
        with urllib.request.urlopen(url) as r:
            keys = re.findall(r"<Key>([^<]+)</Key>", r.read().decode())
        for k in keys:
            with urllib.request.urlopen("%s/%s/%s" % (s3.direct, BUCKET, k)) as r:
                out[k.rsplit("/", 1)[1]] = r.read()
    else:
        for root, _, files in os.walk(tmp_path / "shared-blobs"):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    out[f] = fh.read()
    return out


def local_copies(d):
    """(hex digest, size) of every blob copy in node d's own folder (with
    blobs = s3://, DATA_DIR/blobs holds the node's copies)."""
    out = []
    for root, _, files in os.walk(os.path.join(str(d.data_dir), "blobs")):
        out += [(f, os.path.getsize(os.path.join(root, f))) for f in files
                if re.fullmatch(r"[0-9a-f]{64}", f)]
    return out


def artifact_bytes(d, job):
    return {a["name"]: d.request("GET", "/v1/jobs/%s/artifacts/%s"
                                 % (job["id"], a["name"]))[2]
            for a in job["artifacts"]}


def normalized_info(raw):
    """decompose_info.json without what a run measures of itself (seconds,
    peak memory): the rest must be equal."""
    info = json.loads(raw)

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items()
                    if k not in ("seconds", "peak_rss_bytes", "created_at",
                                 "elapsed_seconds")}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    return strip(info)


def running_on(nodes, job_id, timeout=300):
    deadline = time.monotonic() + timeout
    pat = re.compile(r"req=%s event=job_start" % job_id)
    while time.monotonic() < deadline:
        for d in nodes:
            if d.proc is not None and pat.search(d.log()):
                return d
        time.sleep(0.05)
    raise AssertionError("job %s never started" % job_id)


def wait_task_running_on(d, job_id, node_id, timeout=300):
    """Until node_id runs a factors task of the job with a layer of the job
    done: (stage, index) of that task."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = d.json("GET", "/v1/jobs/" + job_id)[1]
        if j["progress"]["layers_done"] >= 1:
            tasks = d.json("GET", "/v1/jobs/%s/tasks" % job_id)[1]["tasks"]
            for t in tasks:
                if t["state"] == "running" and t["node"] == node_id and \
                        t["stage"] == "factors":
                    return (t["stage"], t["index"])
        time.sleep(0.02)
    raise AssertionError("node %s never ran a factors task of %s" % (node_id, job_id))


def follow_events(d, job_id, out):
    """d's /events stream of the job, to its end, into out["events"]."""
    out["events"] = d.events(job_id)[1]



@pytest.mark.parametrize("kind", ["s3", "file"])
def test_a_spread_job_survives_kill9_of_its_coordinator_mid_task_with_the_single_node_bytes(
        tmp_path, servers, resnet50, kind):
    pg, s3 = servers
    weights, spec = resnet50
    # the reference: the embedded store, one node, the same job
    ref = Daemon(tmp_path / "embedded", NODE_ARGS).start()
    try:
        status, m = ref.upload(weights, name="resnet50")
        assert status == 201, m
        status, job = ref.json("POST", "/v1/jobs", {"model": m["id"], "spec": spec,
                                                    "policy": POLICY})
        assert status == 201, job
        want_job = ref.wait_job(job["id"])
        assert want_job["state"] == "succeeded", want_job
        want = artifact_bytes(ref, want_job)
    finally:
        ref.stop()

    args, db = cluster_args(tmp_path, pg, s3, kind)
    nodes = [node(tmp_path, args, 1), node(tmp_path, args, 2)]
    try:
        n1 = nodes[0]
        status, m = n1.upload(weights, name="resnet50")
        assert status == 201, m
        status, job = n1.json("POST", "/v1/jobs", {"model": m["id"], "spec": spec,
                                                   "policy": POLICY})
        assert status == 201, job
        holder = running_on(nodes, job["id"])  # the job's coordinator
        holder_id = "node%d" % (nodes.index(holder) + 1)
        # node 3 joins now (so that the node killed below is not the one
        # streaming) and follows the job from its first layer to its end
        n3 = node(tmp_path, args, 3)
        nodes.append(n3)
        events = {}
        follower = threading.Thread(target=follow_events,
                                    args=(n3, job["id"], events))
        follower.start()
        # mid-task: the coordinator in a factors task of its own, a layer of
        # the job done
        killed_task = wait_task_running_on(holder, job["id"], holder_id)
        holder.kill9()
        others = [d for d in nodes if d is not holder]
        done = others[-1].wait_job(job["id"], timeout=600)
        follower.join(600)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2
        # run to its end by a surviving node, which the job names
        assert done["node"] in {"node1", "node2", "node3"} - {holder_id}
        assert done["progress"]["layers_done"] == done["progress"]["layers_total"]

        # the tasks: every stage done, each layer in one task of its stage,
        # one plan; the killed node's task run again elsewhere; the work
        # spread over the nodes
        tasks = others[0].json("GET", "/v1/jobs/%s/tasks" % job["id"])[1]["tasks"]
        assert tasks and all(t["state"] == "done" for t in tasks), tasks
        by_stage = {}
        for t in tasks:
            by_stage.setdefault(t["stage"], []).append(t)
        assert [t["layers"] for t in by_stage["plan"]] == [[]]
        for stage in ("spectra", "factors"):
            names = [n for t in by_stage[stage] for n in t["layers"]]
            assert len(names) == len(set(names)), (stage, names)
            assert [t["index"] for t in by_stage[stage]] == \
                list(range(len(by_stage[stage])))
        assert set(n for t in by_stage["factors"] for n in t["layers"]) <= \
            set(n for t in by_stage["spectra"] for n in t["layers"])
        again = [t for t in tasks if (t["stage"], t["index"]) == killed_task]
        assert again and again[0]["attempts"] >= 2 and \
            again[0]["node"] != holder_id, (killed_task, again)
        assert len({t["node"] for t in tasks}) >= 2, tasks

        # byte for byte the single-node run's (the info file but for the
        # time and memory each run measures of itself)
        got = artifact_bytes(others[0], done)
        assert sorted(got) == sorted(want)
        for name in want:
            if name == "decompose_info.json":
                assert normalized_info(got[name]) == normalized_info(want[name])
            else:
                assert got[name] == want[name], name
        # one row per artifact: nothing of the killed run was kept besides
        assert len(done["artifacts"]) == len({a["name"] for a in done["artifacts"]})
        # every blob in the shared store is named by its SHA-256; the task
        # records were collected when the job ended
        stored = blobs_in_store(kind, s3, db, tmp_path)
        assert stored
        for hexd, body in stored.items():
            assert hashlib.sha256(body).hexdigest() == hexd
        assert set(stored) == {a["digest"][7:] for a in done["artifacts"]} | \
            {m["digest"][7:]}
        if kind == "s3":
            # nor do the nodes keep copies of them: beyond the stored blobs
            # a node's folder holds at most the plans it read (spectra),
            # not the factors records (the model's size in all)
            for i, d in enumerate(nodes):
                left = [f for f in local_copies(d) if f[0] not in stored]
                assert sum(size for _, size in left) < len(weights) // 20, (i, left)

        # node 3's stream followed the whole job to its end
        states = [e["state"] for name, e in events.get("events", []) if name == "job"]
        assert states and states[-1] == "succeeded", states
        assert "running" in states

        # 200 concurrent status requests over the live nodes: no errors
        def status_of(i):
            return others[i % len(others)].request(
                "GET", "/v1/jobs/" + job["id"], timeout=120)[0]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(status_of, range(200)))
        assert codes == [200] * 200

        # the nodes: three rows, the killed one's among them
        listed = {n["id"]: n for n in others[0].json("GET", "/v1/nodes")[1]["nodes"]}
        assert set(listed) == {"node1", "node2", "node3"}
    finally:
        for d in nodes:
            if d.proc is not None:
                d.stop()
