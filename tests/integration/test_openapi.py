"""api/openapi.yaml is valid OpenAPI 3.1 and matches the daemon's route table
(`decompd --routes`) both ways, roles included; --help is true to the code."""
import os
import subprocess

import yaml

from conftest import BIN, SOURCE_DIR

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def load_spec():
    with open(os.path.join(SOURCE_DIR, "api", "openapi.yaml")) as f:
        return yaml.safe_load(f)


def code_routes():
    out = subprocess.run([BIN, "--routes"], capture_output=True, text=True, check=True).stdout
    routes = {}
    for line in out.splitlines():
        method, path, role = line.split()
        routes[(method, path)] = role
    assert routes, out
    return routes


def resolve(doc, ref):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        assert part in node, "unresolved $ref " + ref
        node = node[part]
    return node


def walk_refs(doc, node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                resolve(doc, v)
            else:
                walk_refs(doc, v)
    elif isinstance(node, list):
        for v in node:
            walk_refs(doc, v)


def test_openapi_is_valid():
    doc = load_spec()
    assert str(doc["openapi"]).startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    walk_refs(doc, doc)
    op_ids = []
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        params = {p["name"] for p in item.get("parameters", []) if "$ref" not in p}
        params |= {resolve(doc, p["$ref"])["name"] for p in item.get("parameters", [])
                   if "$ref" in p}
        for m in METHODS:
            if m not in item:
                continue
            op = item[m]
            op_ids.append(op["operationId"])
            assert op["responses"], (path, m)
            for status in op["responses"]:
                assert str(status).isdigit(), (path, m, status)
            # every {param} of the path is declared
            for seg in path.split("/"):
                if seg.startswith("{"):
                    assert seg[1:-1] in params, (path, seg)
    assert len(op_ids) == len(set(op_ids)), "duplicate operationId"


def test_every_route_is_documented_and_every_documented_route_exists():
    doc = load_spec()
    documented = {}
    for path, item in doc["paths"].items():
        for m in METHODS:
            if m in item:
                documented[(m.upper(), path)] = item[m].get("x-decompd-role")
    code = code_routes()
    assert set(code) - set(documented) == set(), "routes missing from openapi.yaml"
    assert set(documented) - set(code) == set(), "documented routes the daemon lacks"
    for key, role in code.items():
        assert documented[key] == role, (key, role, documented[key])


def test_help_is_true_to_the_code():
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ("--data-dir", "--listen", "--config", "--max-upload-bytes", "--workers",
                 "--blas-threads", "--http-threads", "--log-level", "token create",
                 "--torchscript-timeout", "--torchscript-memory"):
        assert flag in r.stdout, flag
    # every flag the help lists is accepted
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("--") and " " in line:
            flag = line.split()[0]
            bad = subprocess.run([BIN, flag], capture_output=True, text=True)
            assert "needs a value" in bad.stderr, (flag, bad.stderr)
    r = subprocess.run([BIN, "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2
