"""The auth matrix: every role (none, a bad token, read, submit, admin)
against every route of `decompd --routes`; open while no token exists."""
import subprocess

from conftest import BIN, TEST_INDEX, assert_problem, index_sql

RANK = {"none": 0, "read": 1, "submit": 2, "admin": 3}


def routes():
    out = subprocess.run([BIN, "--routes"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]


def concrete(path):
    return (path.replace("{id}", "j_0000000000000000" if "/jobs/" in path
                         else "m_0000000000000000")
                .replace("{name}", "decompose_info.json"))


def call(daemon, method, path, token):
    body = None
    if method == "POST" and path == "/v1/models":
        body = b"not a weight file"
    elif method == "POST" and path == "/v1/jobs":
        body = b'{"model": "m_0000000000000000", "spec": {"layers": []}}'
    return daemon.request(method, concrete(path), body=body, token=token)


def test_open_until_a_token_exists(daemon):
    for method, path, _ in routes():
        status, _, body = call(daemon, method, path, None)
        assert status not in (401, 403), (method, path, body)


def test_auth_matrix(daemon):
    tokens = {}
    for role in ("read", "submit", "admin"):
        r = daemon.run_cli("token", "create", "--role", role, "--name", "t-" + role)
        tok = r.stdout.strip()
        assert tok.startswith("dcp_") and len(tok) == 68, r.stdout
        if TEST_INDEX:  # the index is the tokens table of its database
            assert tok not in repr(index_sql(daemon, "SELECT * FROM tokens"))
        else:
            assert tok not in open(daemon.data_dir + "/decompd.db", "rb").read().decode("latin1")
        tokens[role] = tok
    tokens["bad"] = "dcp_" + "0" * 64
    listed = daemon.run_cli("token", "list").stdout
    assert "t-read" in listed and "t-admin" in listed and tokens["read"] not in listed
    dup = daemon.run_cli("token", "create", "--role", "read", "--name", "t-read", check=False)
    assert dup.returncode != 0

    for method, path, need in routes():
        for who in ("none", "bad", "read", "submit", "admin"):
            status, hdrs, body = call(daemon, method, path,
                                      None if who == "none" else tokens[who])
            where = (method, path, who, status, body[:200])
            if need == "none":
                assert status == 200, where
            elif who in ("none", "bad"):
                assert_problem(status, hdrs, body, 401, "unauthorized")
                assert hdrs.get("www-authenticate", "").startswith("Bearer"), where
            elif RANK[who] < RANK[need]:
                assert_problem(status, hdrs, body, 403, "forbidden")
            else:
                assert status not in (401, 403), where
                assert status < 500, where
    # a revoked token stops working
    daemon.run_cli("token", "revoke", "--name", "t-read")
    status, hdrs, body = daemon.request("GET", "/v1/jobs", token=tokens["read"])
    assert_problem(status, hdrs, body, 401, "unauthorized")
    assert daemon.request("GET", "/v1/jobs", token=tokens["submit"])[0] == 200
