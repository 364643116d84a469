"""decompctl upload DIR: a sharded safetensors checkpoint up to the real
daemon shard by shard (skipping what the server has, resuming what it holds
part of), bound by its index into one model."""
import hashlib
import json
import os
import re
import struct

import numpy as np

from conftest import ctl, client_env, url_of

INDEX = "model.safetensors.index.json"


def st_bytes(tensors):
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, a in tensors:
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(a.tobytes() for _, a in tensors)


def write_checkpoint(folder, nshards=3, seed=0):
    """{shard name: bytes}, written as the Hub lays it out in `folder`."""
    rng = np.random.default_rng(seed)
    ts = [("layers.%d.%s" % (i, k), rng.standard_normal(shape).astype(np.float32))
          for i in range(6) for k, shape in (("weight", (64, 64)), ("bias", (64,)))]
    os.makedirs(folder, exist_ok=True)
    per = -(-len(ts) // nshards)
    shards, wmap, total = {}, {}, 0
    for s in range(nshards):
        name = "model-%05d-of-%05d.safetensors" % (s + 1, nshards)
        part = ts[s * per:(s + 1) * per]
        shards[name] = st_bytes(part)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(shards[name])
        for n, a in part:
            wmap[n] = name
            total += a.nbytes
    with open(os.path.join(folder, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f)
    return shards


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def stored_lines(daemon):
    return re.findall(r"event=blob_stored digest=(\S+) size=\d+ tensors=\d+ "
                      r"resumed=(\w+)", daemon.log())


def test_upload_dir_binds_the_shards_into_one_model_and_a_rerun_sends_nothing(
        daemon, tmp_path):
    shards = write_checkpoint(tmp_path / "ckpt")
    env = client_env(daemon, tmp_path / "cache")
    p = ctl("upload", tmp_path / "ckpt", "--name", "llm", "--json", env=env)
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["format"] == "safetensors-sharded" and m["name"] == "llm"
    assert [s["digest"] for s in m["shards"]] == [sha(b) for b in shards.values()]
    assert m["size"] == sum(len(b) for b in shards.values())
    assert "3 sent, 0 resumed, 0 already on the server" in p.stderr, p.stderr
    assert sorted(d for d, _ in stored_lines(daemon)) == sorted(
        sha(b) for b in shards.values())

    # again, and through the index file: nothing is sent, the same model
    p = ctl("upload", tmp_path / "ckpt" / INDEX, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == m["id"]
    assert "0 sent, 0 resumed, 3 already on the server; 0 B sent" in p.stderr, p.stderr
    assert "already uploaded" in p.stderr
    assert len(stored_lines(daemon)) == 3


def test_upload_dir_resumes_a_shard_the_server_holds_part_of(daemon, tmp_path):
    shards = write_checkpoint(tmp_path / "ckpt")
    name, data = list(shards.items())[1]
    half = len(data) // 2
    status, hdrs, _ = daemon.request(
        "PUT", "/v1/blobs/" + sha(data), body=data[:half],
        headers={"Content-Range": "bytes 0-%d/%d" % (half - 1, len(data))})
    assert status == 202 and hdrs["upload-offset"] == str(half)
    p = ctl("upload", tmp_path / "ckpt", env=client_env(daemon, tmp_path / "cache"))
    assert p.returncode == 0, p.stderr
    assert "2 sent, 1 resumed, 0 already on the server" in p.stderr, p.stderr
    assert dict(stored_lines(daemon))[sha(data)] == "yes"
    status, _, body = daemon.request("GET", "/v1/blobs/" + sha(data))
    assert status == 200 and body == data


def test_upload_dir_starts_a_shard_over_when_what_the_server_holds_is_not_its_start(
        daemon, tmp_path):
    shards = write_checkpoint(tmp_path / "ckpt")
    name, data = list(shards.items())[0]
    junk = b"\0" * 100
    status, _, _ = daemon.request(
        "PUT", "/v1/blobs/" + sha(data), body=junk,
        headers={"Content-Range": "bytes 0-99/%d" % len(data)})
    assert status == 202
    p = ctl("upload", tmp_path / "ckpt", env=client_env(daemon, tmp_path / "cache"))
    assert p.returncode == 0, p.stderr
    assert "upload_digest_mismatch" in daemon.log()
    status, _, body = daemon.request("GET", "/v1/blobs/" + sha(data))
    assert body == data


def test_upload_dir_refuses_an_index_naming_a_shard_outside_its_folder(daemon, tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    (tmp_path / "secret.safetensors").write_bytes(b"do not send")
    idx = json.loads((tmp_path / "ckpt" / INDEX).read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = "../secret.safetensors"
    (tmp_path / "ckpt" / INDEX).write_text(json.dumps(idx))
    p = ctl("upload", tmp_path / "ckpt", "--json",
            env=client_env(daemon, tmp_path / "cache"))
    assert p.returncode == 3, (p.returncode, p.stderr)
    err = json.loads(p.stdout)["error"]
    assert err["code"] == "bad_shard_index" and "../secret.safetensors" in err["message"]
    assert stored_lines(daemon) == []  # nothing was sent


def test_upload_dir_reports_a_shard_the_server_refuses(daemon, tmp_path):
    shards = write_checkpoint(tmp_path / "ckpt")
    name = list(shards)[2]
    with open(tmp_path / "ckpt" / name, "r+b") as f:
        f.truncate(len(shards[name]) - 7)  # cut mid-tensor
    p = ctl("upload", tmp_path / "ckpt", "--json",
            env=client_env(daemon, tmp_path / "cache"))
    assert p.returncode == 3, (p.returncode, p.stderr)
    err = json.loads(p.stdout)["error"]
    assert err["code"] == "bad_safetensors" and name in err["message"], err
    _, models = daemon.json("GET", "/v1/models", expect=200)
    assert models["models"] == []


# ---- the Python client: Client.upload / Client.submit of a folder ---------


def test_python_upload_of_a_folder_binds_the_shards_and_again_sends_nothing(
        daemon, tmp_path):
    from decompd.client import Client
    shards = write_checkpoint(tmp_path / "ckpt")
    c = Client(url_of(daemon))
    m = c.upload(tmp_path / "ckpt", name="llm")
    assert m["format"] == "safetensors-sharded" and m["name"] == "llm"
    assert [s["digest"] for s in m["shards"]] == [sha(b) for b in shards.values()]
    assert sorted(d for d, _ in stored_lines(daemon)) == sorted(
        sha(b) for b in shards.values())
    again = c.upload(tmp_path / "ckpt" / INDEX)
    assert again["id"] == m["id"]
    assert len(stored_lines(daemon)) == 3  # HEAD found each: nothing sent


def test_python_upload_resumes_a_shard_the_server_holds_part_of_and_restarts_a_wrong_one(
        daemon, tmp_path):
    from decompd.client import Client
    shards = write_checkpoint(tmp_path / "ckpt")
    (n0, d0), (n1, d1) = list(shards.items())[:2]
    half = len(d1) // 2
    status, _, _ = daemon.request(
        "PUT", "/v1/blobs/" + sha(d1), body=d1[:half],
        headers={"Content-Range": "bytes 0-%d/%d" % (half - 1, len(d1))})
    assert status == 202
    status, _, _ = daemon.request(
        "PUT", "/v1/blobs/" + sha(d0), body=b"\0" * 100,
        headers={"Content-Range": "bytes 0-99/%d" % len(d0)})
    assert status == 202
    m = Client(url_of(daemon)).upload(tmp_path / "ckpt")
    assert m["format"] == "safetensors-sharded"
    stored = dict(stored_lines(daemon))
    assert stored[sha(d1)] == "yes"          # resumed from the half it held
    assert "upload_digest_mismatch" in daemon.log()  # d0's junk start: again
    for d in (d0, d1):
        status, _, body = daemon.request("GET", "/v1/blobs/" + sha(d))
        assert status == 200 and body == d


def test_python_upload_refuses_a_bad_index_before_sending_anything(daemon, tmp_path):
    from decompd.client import Client
    from decompd.errors import SafetensorsError
    write_checkpoint(tmp_path / "ckpt")
    (tmp_path / "secret.safetensors").write_bytes(b"do not send")
    idx = json.loads((tmp_path / "ckpt" / INDEX).read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = "../secret.safetensors"
    (tmp_path / "ckpt" / INDEX).write_text(json.dumps(idx))
    c = Client(url_of(daemon))
    try:
        c.upload(tmp_path / "ckpt")
        raise AssertionError("a shard name that is a path was accepted")
    except SafetensorsError as e:
        assert "../secret.safetensors" in str(e)
    idx["weight_map"][first] = "model-00009-of-00009.safetensors"
    (tmp_path / "ckpt" / INDEX).write_text(json.dumps(idx))
    try:
        c.upload(tmp_path / "ckpt")
        raise AssertionError("a missing shard file was accepted")
    except SafetensorsError as e:
        assert "model-00009-of-00009.safetensors" in str(e) and "not a file" in str(e)
    assert stored_lines(daemon) == []


def test_python_upload_names_the_shard_the_server_refuses(daemon, tmp_path):
    from decompd.client import Client
    from decompd.client import ServiceValueError
    shards = write_checkpoint(tmp_path / "ckpt")
    name = list(shards)[2]
    with open(tmp_path / "ckpt" / name, "r+b") as f:
        f.truncate(len(shards[name]) - 7)  # cut mid-tensor
    try:
        Client(url_of(daemon)).upload(tmp_path / "ckpt")
        raise AssertionError("a truncated shard was accepted")
    except ServiceValueError as e:
        assert e.code_name == "bad_safetensors" and name in str(e), e
    _, models = daemon.json("GET", "/v1/models", expect=200)
    assert models["models"] == []
