"""GET /v1/nodes: the daemon writes its row when it starts serving and
beats every 5 s — its id (node_id), version, address, workers and the jobs
they hold — and says which node answered."""
import time

from conftest import assert_problem


def test_a_node_lists_itself_alive_with_its_address_and_workers(daemon_factory):
    d = daemon_factory(args=("--node-id", "node-a", "--workers", "1")).start()
    status, body = d.json("GET", "/v1/nodes")
    assert status == 200, body
    assert body["self"] == "node-a"
    (me,) = [n for n in body["nodes"] if n["id"] == "node-a"]
    assert me["alive"] is True and me["workers"] == 1 and me["running"] == 0
    assert me["address"] == "127.0.0.1:%d" % d.port
    version = d.run_cli("--version").stdout.split()[-1]
    assert me["version"] == version
    first = me["heartbeat_at"]
    assert me["started_at"] <= first
    # and /metrics says the same, per node
    text = d.request("GET", "/metrics")[2].decode()
    assert 'decompd_node_workers{node="node-a"} 1' in text
    assert 'decompd_node_running{node="node-a"} 0' in text
    assert 'decompd_node_alive{node="node-a"} 1' in text
    assert 'decompd_node_heartbeat_age_seconds{node="node-a"} ' in text
    # the next beat moves its heartbeat on
    deadline = time.monotonic() + 60
    while True:
        (me,) = [n for n in d.json("GET", "/v1/nodes")[1]["nodes"]
                 if n["id"] == "node-a"]
        if me["heartbeat_at"] > first:
            break
        assert time.monotonic() < deadline, "no second heartbeat"
        time.sleep(0.5)
    # restarted under another id: both rows, the new one answering
    d.stop()
    d.args = ["--node-id", "node-b", "--workers", "1"]
    d.start()
    body = d.json("GET", "/v1/nodes")[1]
    assert body["self"] == "node-b"
    assert {"node-a", "node-b"} <= {n["id"] for n in body["nodes"]}


def test_nodes_need_a_read_token_once_tokens_exist(daemon):
    daemon.run_cli("token", "create", "--role", "read", "--name", "r")
    assert_problem(*daemon.request("GET", "/v1/nodes"), 401, "unauthorized")


def test_a_job_names_the_node_that_ran_it(daemon_factory):
    import io

    import torch

    from conftest import conv_spec
    d = daemon_factory(args=("--node-id", "node-a", "--workers", "1")).start()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    status, m = d.upload(buf.getvalue())
    assert status == 201, m
    status, job = d.json("POST", "/v1/jobs", {"model": m["id"],
                                              "spec": conv_spec(net)})
    assert status == 201, job
    assert job["node"] is None  # no node has claimed it yet
    done = d.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["node"] == "node-a"
    listed = d.json("GET", "/v1/jobs")[1]["jobs"]
    assert [j["node"] for j in listed if j["id"] == job["id"]] == ["node-a"]
