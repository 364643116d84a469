"""Text a hostile client sends that is not UTF-8: a name is refused with 400
before anything is stored; what the daemon echoes back (an id, a path) goes
out escaped in a valid problem+json; names and messages stored before the
check still answer as JSON; token names are checked too."""
import io
import json
import os
import sqlite3

import torch

from conftest import BIN, assert_problem, conv_spec, pg_only_skip


def stored_files(daemon):
    out = []
    for sub in ("blobs", "tmp"):
        for root, _, files in os.walk(os.path.join(daemon.data_dir, sub)):
            out += [os.path.join(root, f) for f in files]
    return out


def small_model_pth(seed=1):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return net, buf.getvalue()


def test_non_utf8_model_name_is_refused_and_nothing_is_stored(daemon):
    _, data = small_model_pth()
    for q in ("%FF%FEbad", "ok%C3", "%ED%A0%80", "%C0%AF", "tab%09", "c1%C2%85",
              "x" * 256):
        status, hdrs, body = daemon.request(
            "POST", "/v1/models?name=" + q, body=data,
            headers={"Content-Type": "application/octet-stream"})
        doc = assert_problem(status, hdrs, body, 400, "bad_request")
        assert doc["detail"].startswith("name "), doc
        assert stored_files(daemon) == []
        assert daemon.json("GET", "/v1/models", expect=200)[1] == {"models": []}
    # The same bytes with a good (non-ASCII) name: stored and answered as is.
    status, m = daemon.upload(data, name="r%C3%A9sum%C3%A9-%E6%A8%A1%E5%9E%8B")
    assert status == 201, m
    assert m["name"] == "résumé-模型"
    assert daemon.json("GET", "/v1/models/" + m["id"], expect=200)[1] == m
    assert [x["id"] for x in daemon.json("GET", "/v1/models", expect=200)[1]["models"]] \
        == [m["id"]]


def test_a_non_utf8_id_or_path_gets_a_valid_problem_json_with_the_bytes_escaped(daemon):
    for path in ("/v1/models/%FF%FE", "/v1/jobs/j_%FF", "/v1/models/%FF/spec",
                 "/v1/jobs/j_%FE/artifacts/decompose_info.json", "/v1/%FF%FE",
                 "/v1/models/m_%C3"):
        status, hdrs, body = daemon.request("GET", path)
        doc = assert_problem(status, hdrs, body, 404, "not_found")
        assert "\\x" in doc["detail"], doc
    status, hdrs, body = daemon.request("GET", "/v1/models/%FF%FE")
    assert "\\xff\\xfe" in json.loads(body)["detail"]
    status, hdrs, body = daemon.request("PUT", "/v1/models/%FF")
    doc = assert_problem(status, hdrs, body, 405, "method_not_allowed")
    assert "\\xff" in doc["detail"] and "DELETE" in hdrs["allow"], doc
    status, hdrs, body = daemon.request("POST", "/v1/jobs/j_%FF/cancel")
    assert_problem(status, hdrs, body, 404, "not_found")
    # a job body that is not UTF-8 is bad JSON, answered as such
    status, hdrs, body = daemon.request("POST", "/v1/jobs",
                                        body=b'{"model": "m_\xff\xfe"}')
    assert_problem(status, hdrs, body, 400, "bad_json")
    status, hdrs, body = daemon.request("POST", "/v1/jobs",
                                        body=b'{"model": "m_\\u0000"}')
    assert_problem(status, hdrs, body, 400, "bad_json")
    assert daemon.json("GET", "/healthz", expect=200)[1] == {"status": "ok"}


@pg_only_skip("a UTF8 database refuses the non-UTF-8 bytes this test plants in "
              "the SQLite file, so such rows cannot exist there")
def test_names_and_messages_stored_before_the_check_still_answer_as_json(daemon):
    """Rows written by an older daemon (or a hand-edited database) may hold
    bytes that are not UTF-8: the model and job answers escape them instead
    of failing for good."""
    net, data = small_model_pth(2)
    status, m = daemon.upload(data, name="plain")
    assert status == 201, m
    status, j = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net),
                                                  "policy": "budget"})
    assert status == 201, j
    done = daemon.wait_job(j["id"])
    assert done["state"] == "succeeded", done
    assert daemon.stop() == 0
    db = sqlite3.connect(os.path.join(daemon.data_dir, "decompd.db"))
    db.execute("UPDATE models SET name=CAST(x'fffe626164' AS TEXT) WHERE id=?", (m["id"],))
    db.execute("UPDATE jobs SET state='failed', error_code='io_error', "
               "error_message=CAST(x'6c6f7374ff' AS TEXT) WHERE id=?", (j["id"],))
    db.execute("UPDATE job_layers SET name=CAST(x'30ff' AS TEXT) WHERE job_id=?", (j["id"],))
    db.commit()
    db.close()
    daemon.start()
    status, got = daemon.json("GET", "/v1/models/" + m["id"])
    assert status == 200 and got["name"] == "\\xff\\xfebad", got
    status, got = daemon.json("GET", "/v1/models")
    assert status == 200 and got["models"][0]["name"] == "\\xff\\xfebad", got
    status, got = daemon.json("GET", "/v1/jobs/" + j["id"])
    assert status == 200, got
    assert got["error"] == {"code": "io_error", "message": "lost\\xff"}, got
    assert got["layers"][0]["name"] == "0\\xff", got
    status, got = daemon.json("GET", "/v1/jobs")
    assert status == 200 and got["jobs"][0]["error"]["message"] == "lost\\xff", got


def test_a_token_name_that_is_not_utf8_is_refused(daemon):
    import subprocess
    for bad in (b"\xff\xfe", b"ctl\x01", b"x" * 256):
        r = subprocess.run([BIN.encode(), b"token", b"create", b"--role", b"read",
                            b"--name", bad, b"--data-dir", daemon.data_dir.encode()],
                           capture_output=True)
        assert r.returncode == 2, r
        assert b"token name" in r.stderr, r.stderr
    assert daemon.run_cli("token", "list").stdout == ""
    # the API is still open: no token was made
    assert daemon.request("GET", "/v1/jobs")[0] == 200
    r = daemon.run_cli("token", "create", "--role", "read", "--name", "équipe-ci")
    assert r.stdout.startswith("dcp_")


def test_an_encoded_nul_in_the_path_or_query_is_refused_not_cut(daemon):
    """MHD decodes %00 into its C strings, which end there: without the
    check, /v1/models/ID%00/content served the model's JSON and ?name=a%00b
    stored "a"."""
    net, data = small_model_pth(3)
    status, m = daemon.upload(data, name="nul")
    assert status == 201, m
    status, j = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": conv_spec(net)})
    assert status == 201, j
    assert daemon.wait_job(j["id"])["state"] == "succeeded"
    for method, path in (
            ("GET", "/v1/models/%s%%00/content" % m["id"]),
            ("GET", "/v1/models/%s%%00" % m["id"]),
            ("GET", "/v1/jobs/%s/artifacts/decompose_info.json%%00.txt" % j["id"]),
            ("GET", "/v1/jobs?state=queued%00x"),
            ("GET", "/v1/jobs?st%00ate=queued"),
            ("DELETE", "/v1/models/%s%%00x" % m["id"]),
            ("POST", "/v1/models?name=ab%00cd")):
        status, hdrs, body = daemon.request(method, path, body=data if method == "POST" else None)
        doc = assert_problem(status, hdrs, body, 400, "bad_request")
        assert "NUL" in doc["detail"], doc
    # nothing was stored or deleted
    assert [x["name"] for x in daemon.json("GET", "/v1/models", expect=200)[1]["models"]] \
        == ["nul"]
    # "%2500" is an escaped '%' followed by "00", not a NUL
    status, hdrs, body = daemon.request("GET", "/v1/models/m_%2500")
    doc = assert_problem(status, hdrs, body, 404, "not_found")
    assert "m_%00" in doc["detail"], doc
