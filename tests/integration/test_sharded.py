"""Sharded safetensors checkpoints through the daemon: each shard uploaded
as its own content-addressed blob (PUT /v1/blobs/{digest}, resumable),
bound into one model by its index (POST /v1/models with a JSON body), a job
on it writing sharded outputs as artifacts.

The checkpoints are synthesized here (a tiny safetensors writer: json +
numpy) and the outputs read back by an equally tiny reader; neither goes
through decompd's code. The reference for the bytes is decompctl decompose
on the same tensors in one file.
"""
import hashlib
import json
import os
import socket
import struct
import subprocess
import time

import numpy as np
import pytest

from conftest import Daemon, assert_problem

DECOMPCTL = os.environ.get("DECOMPCTL", "")
INDEX = "model.safetensors.index.json"
DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64",
          np.dtype("int64"): "I64"}
NP_OF = {v: k for k, v in DTYPES.items()}
# The engine single-threaded: on a shared 2-core machine OpenBLAS threads
# that spin make a run many times slower (the bytes do not depend on it).
ENV = {"OPENBLAS_NUM_THREADS": "1"}


def st_bytes(tensors, metadata=None):
    """A safetensors file: tensors is a list of (name, numpy array)."""
    header, pos = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors:
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(
        np.ascontiguousarray(a).tobytes() for _, a in tensors)


def st_read(buf):
    """{name: (dtype, shape, bytes)} of a safetensors file, its layout
    checked (offsets tile the data exactly)."""
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    header.pop("__metadata__", None)
    data = buf[8 + n:]
    pos = 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, end = e["data_offsets"]
        assert b == pos, (name, b, pos)
        count = int(np.prod(e["shape"])) if e["shape"] else 1
        assert end - b == count * np.dtype(NP_OF[e["dtype"]]).itemsize, name
        pos = end
    assert pos == len(data), (pos, len(data))
    return {name: (e["dtype"], tuple(e["shape"]),
                   data[e["data_offsets"][0]:e["data_offsets"][1]])
            for name, e in header.items()}


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def split(tensors, nshards):
    """The Hub's layout in memory: ({shard name: bytes}, index)."""
    per = -(-len(tensors) // nshards)
    shards, wmap, total = {}, {}, 0
    for s in range(nshards):
        name = "model-%05d-of-%05d.safetensors" % (s + 1, nshards)
        part = tensors[s * per:(s + 1) * per]
        shards[name] = st_bytes(part, {"format": "pt"})
        for n, a in part:
            wmap[n] = name
            total += a.nbytes
    return shards, {"metadata": {"total_size": total}, "weight_map": wmap}


def low_rank(rng, shape, r):
    """Trained-like weights: low rank plus a little noise."""
    m, n = shape[0], int(np.prod(shape[1:]))
    w = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / r
    return (w + 0.01 * rng.standard_normal((m, n))).reshape(shape).astype(np.float32)


def small_model(seed=0):
    """A few convs and Linear layers, plus tensors that pass through; the
    tensors in order, and the layer spec."""
    rng = np.random.default_rng(seed)
    ts, layers = [], []
    chans = [(3, 32), (32, 48), (48, 64)]
    for i, (ci, co) in enumerate(chans):
        ts.append(("conv%d.weight" % i, low_rank(rng, (co, ci, 3, 3), 6)))
        ts.append(("conv%d.bias" % i, rng.standard_normal(co).astype(np.float32)))
        ts.append(("bn%d.weight" % i, np.ones(co, np.float32)))
        ts.append(("bn%d.num_batches_tracked" % i, np.array(12, np.int64)))
        layers.append({"name": "conv%d" % i, "type": "Conv2d", "in_channels": ci,
                       "out_channels": co, "kernel_size": [3, 3], "stride": [1, 1],
                       "padding": [1, 1], "dilation": [1, 1], "groups": 1,
                       "bias": True, "padding_mode": "zeros"})
    for i, (fi, fo) in enumerate([(256, 128), (128, 64)]):
        ts.append(("fc%d.weight" % i, low_rank(rng, (fo, fi), 12)))
        ts.append(("fc%d.bias" % i, rng.standard_normal(fo).astype(np.float32)))
        layers.append({"name": "fc%d" % i, "type": "Linear", "in_features": fi,
                       "out_features": fo, "bias": True})
    return ts, {"layers": layers}


POLICY = {"name": "fixed", "rank": 8, "types": ["Conv2d", "Linear"]}


def put_blob(d, data, token=None, headers=None, digest=None):
    h = {"Content-Type": "application/octet-stream"}
    h.update(headers or {})
    return d.request("PUT", "/v1/blobs/" + (digest or sha(data)), body=data,
                     headers=h, token=token)


def bind(d, index, shards, token=None, name=None):
    path = "/v1/models" + ("?name=" + name if name else "")
    return d.json("POST", path, body={"index": index, "shards": shards},
                  token=token)


def upload_checkpoint(d, shards, index, token=None):
    for name, data in shards.items():
        status, _, body = put_blob(d, data, token=token)
        assert status == 201, (name, status, body[:300])
    status, m = bind(d, index, {n: sha(b) for n, b in shards.items()}, token=token)
    assert status == 201, m
    return m


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data", ["--workers", "1", "--blas-threads", "1"],
               env=ENV).start()
    yield d
    d.stop()


@pytest.fixture
def ckpt():
    ts, spec = small_model()
    shards, index = split(ts, 3)
    return ts, spec, shards, index


def one_file_run(tmp_path, ts, spec, policy):
    """decompctl decompose on the same tensors in one safetensors file."""
    one = tmp_path / "one.safetensors"
    one.write_bytes(st_bytes(ts, {"format": "pt"}))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    p = subprocess.run([DECOMPCTL, "decompose", "--weights", str(one), "--spec",
                        str(tmp_path / "spec.json"), "--out", str(tmp_path / "one"),
                        "--policy", json.dumps(policy), "--format", "safetensors",
                        "--quiet"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, **ENV))
    assert p.returncode == 0, p.stderr
    return st_read((tmp_path / "one" / "decomposed_weights.safetensors").read_bytes())


def fetch_sharded_outputs(d, job, token=None):
    """Every tensor of a job's sharded output, checked against its index."""
    names = {a["name"]: a for a in job["artifacts"]}
    status, _, body = d.request("GET", names[INDEX]["url"], token=token)
    assert status == 200
    index = json.loads(body)
    tensors, total = {}, 0
    for shard in sorted(set(index["weight_map"].values())):
        assert shard in names, (shard, list(names))
        status, hdrs, body = d.request("GET", names[shard]["url"], token=token)
        assert status == 200
        assert sha(body) == names[shard]["digest"] == hdrs["etag"].strip('"')
        for name, t in st_read(body).items():
            assert index["weight_map"][name] == shard, name
            assert name not in tensors, name
            tensors[name] = t
            total += len(t[2])
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total
    return tensors, index


# ---- the whole flow -------------------------------------------------------

def test_shards_uploaded_as_blobs_and_bound_by_the_index_decompose_to_the_tensors_of_a_one_file_run(
        daemon, ckpt, tmp_path):
    ts, spec, shards, index = ckpt
    m = upload_checkpoint(daemon, shards, index)
    assert m["format"] == "safetensors-sharded"
    assert m["tensors"] == len(ts)
    assert m["size"] == sum(len(b) for b in shards.values())
    assert [s["name"] for s in m["shards"]] == list(shards)
    assert [s["digest"] for s in m["shards"]] == [sha(b) for b in shards.values()]
    assert [s["size"] for s in m["shards"]] == [len(b) for b in shards.values()]
    _, got = daemon.json("GET", "/v1/models/" + m["id"], expect=200)
    assert got["shards"] == m["shards"] and got["digest"] == m["digest"]

    # the same checkpoint again is the same model; a stored shard is 200
    status, again = bind(daemon, index, {n: sha(b) for n, b in shards.items()})
    assert status == 200 and again["id"] == m["id"]
    name0 = next(iter(shards))
    status, hdrs, body = put_blob(daemon, shards[name0])
    assert status == 200, body
    assert json.loads(body)["size"] == len(shards[name0])

    daemon.json("PUT", "/v1/models/%s/spec" % m["id"], body=spec, expect=200)
    _, job = daemon.json("POST", "/v1/jobs", body={
        "model": m["id"], "policy": POLICY, "shard_bytes": 40000}, expect=201)
    assert job["shard_bytes"] == 40000
    job = daemon.wait_job(job["id"])
    assert job["state"] == "succeeded", job
    names = sorted(a["name"] for a in job["artifacts"])
    shard_names = [n for n in names if n.startswith("model-")]
    assert len(shard_names) >= 2, names  # 40 kB shards split the output
    assert names == sorted(shard_names + [INDEX, "decompose_info.json"])
    assert job["peak_rss_bytes"] > 0

    got, _ = fetch_sharded_outputs(daemon, job)
    want = one_file_run(tmp_path, ts, spec, POLICY)
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name
    assert "conv1.0.weight" in got and "conv1.weight" not in got
    assert "fc0.0.weight" in got and got["bn0.num_batches_tracked"][2] == \
        np.array(12, np.int64).tobytes()

    _, info = daemon.json("GET", "/v1/jobs/%s/artifacts/decompose_info.json" % job["id"],
                          expect=200)
    assert info["source"]["digest"] == m["digest"]
    assert info["summary"]["peak_rss_bytes"] == job["peak_rss_bytes"]
    assert len(info["layers"]) == 5


def test_a_sharded_model_s_content_is_its_binding_document_and_each_shard_downloads_by_digest(
        daemon, ckpt):
    _, _, shards, index = ckpt
    m = upload_checkpoint(daemon, shards, index)
    status, hdrs, body = daemon.request("GET", "/v1/models/%s/content" % m["id"])
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert sha(body) == m["digest"]
    doc = json.loads(body)
    assert doc["index"] == index
    assert doc["shards"] == {n: sha(b) for n, b in shards.items()}
    for name, data in shards.items():
        status, hdrs, body = daemon.request("HEAD", "/v1/blobs/" + sha(data))
        assert status == 200 and int(hdrs["content-length"]) == len(data)
        status, _, body = daemon.request("GET", "/v1/blobs/" + sha(data)[7:])
        assert status == 200 and body == data


def test_a_job_on_a_sharded_model_runs_with_the_daemons_shard_bytes_when_it_gives_none(
        tmp_path, ckpt):
    _, spec, shards, index = ckpt
    d = Daemon(tmp_path / "data", ["--workers", "1", "--blas-threads", "1",
                                   "--shard-bytes", "3K"], env=ENV).start()
    try:
        m = upload_checkpoint(d, shards, index)
        d.json("PUT", "/v1/models/%s/spec" % m["id"], body=spec, expect=200)
        _, job = d.json("POST", "/v1/jobs", body={"model": m["id"], "policy": POLICY},
                        expect=201)
        assert job["shard_bytes"] is None
        job = d.wait_job(job["id"])
        assert job["state"] == "succeeded", job
        got, index_out = fetch_sharded_outputs(d, job)
        sizes = {a["name"]: a["size"] for a in job["artifacts"]}
        shard_names = sorted(set(index_out["weight_map"].values()))
        # more shards than a job has fixed artifacts: every one is listed
        assert len(shard_names) >= 10, shard_names
        assert sorted(sizes) == sorted(shard_names + [INDEX, "decompose_info.json"])
        for n in shard_names:
            # a shard holds up to 3 KiB of tensors (one larger tensor alone)
            tensors = [t for k, t in got.items() if index_out["weight_map"][k] == n]
            assert len(tensors) == 1 or sum(len(t[2]) for t in tensors) <= 3 * 1024, n
            assert sizes[n] > 0
        # a job on a single-file model has no shard size; it records the
        # daemon's peak RSS too
        ts, _ = small_model()
        status, doc = d.upload(st_bytes(ts, {"format": "pt"}))
        assert status == 201, doc
        status, hdrs, body = d.request("POST", "/v1/jobs", body={
            "model": doc["id"], "spec": spec, "policy": POLICY,
            "shard_bytes": 1000})
        assert_problem(status, hdrs, body, 400, "bad_request")
        _, job = d.json("POST", "/v1/jobs", body={
            "model": doc["id"], "spec": spec, "policy": POLICY}, expect=201)
        job = d.wait_job(job["id"])
        assert job["state"] == "succeeded" and job["peak_rss_bytes"] > 0, job
        assert sorted(a["name"] for a in job["artifacts"]) == [
            "decompose_info.json", "decomposed_weights.pth",
            "decomposed_weights.safetensors"]
    finally:
        d.stop()


# ---- resumable uploads ----------------------------------------------------

def test_half_a_shard_is_kept_head_gives_its_offset_and_the_rest_completes_it(daemon, ckpt):
    _, _, shards, _ = ckpt
    data = list(shards.values())[1]
    n, h, digest = len(data), len(data) // 2, sha(data)
    status, hdrs, body = put_blob(daemon, data[:h], digest=digest, headers={
        "Content-Range": "bytes 0-%d/%d" % (h - 1, n)})
    assert status == 202, body
    assert hdrs["upload-offset"] == str(h) and json.loads(body)["offset"] == h

    status, hdrs, body = daemon.request("HEAD", "/v1/blobs/" + digest)
    assert status == 404 and hdrs["upload-offset"] == str(h)

    # a chunk from the wrong offset is refused, saying where to resume
    status, hdrs, body = put_blob(daemon, data[h + 10:], digest=digest, headers={
        "Content-Range": "bytes %d-%d/%d" % (h + 10, n - 1, n)})
    assert_problem(status, hdrs, body, 409, "conflict")
    assert hdrs["upload-offset"] == str(h)

    status, hdrs, body = put_blob(daemon, data[h:], digest=digest, headers={
        "Content-Range": "bytes %d-%d/%d" % (h, n - 1, n)})
    assert status == 201, body
    doc = json.loads(body)
    assert doc["digest"] == digest and doc["size"] == n and doc["tensors"] > 0
    status, hdrs, _ = daemon.request("HEAD", "/v1/blobs/" + digest)
    assert status == 200 and int(hdrs["content-length"]) == n
    status, _, body = daemon.request("GET", "/v1/blobs/" + digest)
    assert body == data


def test_an_upload_cut_off_mid_body_resumes_with_upload_offset_after_a_restart(tmp_path, ckpt):
    _, _, shards, _ = ckpt
    data = list(shards.values())[0]
    digest, cut = sha(data), len(data) // 3
    d = Daemon(tmp_path / "data", env=ENV).start()
    try:
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(("PUT /v1/blobs/%s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   "application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                   % (digest, len(data))).encode() + data[:cut])
        time.sleep(0.5)
        s.close()
        deadline = time.monotonic() + 10
        while True:
            status, hdrs, _ = d.request("HEAD", "/v1/blobs/" + digest)
            if hdrs.get("upload-offset") == str(cut) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 404 and hdrs.get("upload-offset") == str(cut), hdrs
        d.stop()
        d.start()
        status, hdrs, _ = d.request("HEAD", "/v1/blobs/" + digest)
        assert status == 404 and hdrs["upload-offset"] == str(cut)
        status, hdrs, body = put_blob(d, data[cut:], digest=digest,
                                      headers={"Upload-Offset": str(cut)})
        assert status == 201, body
        status, _, body = d.request("GET", "/v1/blobs/" + digest)
        assert body == data
    finally:
        d.stop()


def test_a_second_upload_of_a_blob_while_one_is_in_progress_is_a_409(daemon, ckpt):
    _, _, shards, _ = ckpt
    data = list(shards.values())[2]
    digest = sha(data)
    s = socket.create_connection(("127.0.0.1", daemon.port))
    try:
        s.sendall(("PUT /v1/blobs/%s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   "application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                   % (digest, len(data))).encode() + data[:100])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the first one holds the upload
            if "upload-offset" in daemon.request("HEAD", "/v1/blobs/" + digest)[1]:
                break
            time.sleep(0.05)
        status, hdrs, body = put_blob(daemon, data)
        doc = assert_problem(status, hdrs, body, 409, "conflict")
        assert "in progress" in doc["detail"], doc
        s.sendall(data[100:])
        s.settimeout(30)
        assert s.recv(64).startswith(b"HTTP/1.1 201"), "the first one completes"
    finally:
        s.close()


# ---- bad input --------------------------------------------------------------

def test_a_shard_whose_bytes_are_not_its_digest_is_refused_and_discarded(daemon, ckpt):
    _, _, shards, _ = ckpt
    data = list(shards.values())[0]
    wrong = sha(data + b"x")
    status, hdrs, body = put_blob(daemon, data, digest=wrong)
    doc = assert_problem(status, hdrs, body, 422, "upload_digest_mismatch")
    assert sha(data) in doc["detail"] and wrong in doc["detail"]
    status, hdrs, _ = daemon.request("HEAD", "/v1/blobs/" + wrong)
    assert status == 404 and "upload-offset" not in hdrs
    status, _, _ = daemon.request("HEAD", "/v1/blobs/" + sha(data))
    assert status == 404


def test_a_shard_truncated_mid_tensor_is_refused_as_bad_safetensors(daemon, ckpt):
    _, _, shards, _ = ckpt
    data = list(shards.values())[0]
    cut = data[:len(data) - 100]
    status, hdrs, body = put_blob(daemon, cut)
    doc = assert_problem(status, hdrs, body, 422, "bad_safetensors")
    assert sha(cut) in doc["detail"]
    status, hdrs, _ = daemon.request("HEAD", "/v1/blobs/" + sha(cut))
    assert status == 404 and "upload-offset" not in hdrs


def test_a_shard_that_is_not_safetensors_is_refused(daemon):
    import io
    import torch
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    for data, code in ((buf.getvalue(), "bad_safetensors"),
                       (b"hello, not a weight file", "unknown_format")):
        status, hdrs, body = put_blob(daemon, data)
        doc = assert_problem(status, hdrs, body, 422, code)
        assert "safetensors" in doc["detail"] or "format" in doc["detail"], doc


def test_blob_digests_in_the_path_are_checked_before_anything_is_stored(daemon, tmp_path):
    for bad in ("sha256:XYZ", "sha256:" + "A" * 64, "../../etc", "md5:" + "a" * 32):
        status, hdrs, body = daemon.request("PUT", "/v1/blobs/" + bad, body=b"abc")
        assert status in (400, 404), (bad, status)
        assert_problem(status, hdrs, body, status, "bad_request" if status == 400
                       else "not_found")
    assert os.listdir(tmp_path / "data" / "partial") == []


def test_a_shard_over_max_upload_bytes_is_refused_before_its_body(tmp_path, ckpt):
    _, _, shards, _ = ckpt
    data = list(shards.values())[0]
    d = Daemon(tmp_path / "data", ["--max-upload-bytes", str(len(data) - 1)],
               env=ENV).start()
    try:
        status, hdrs, body = put_blob(d, data)
        assert_problem(status, hdrs, body, 413, "payload_too_large")
        # nor in pieces: the whole blob counts
        h = len(data) // 2
        status, hdrs, body = put_blob(d, data[:h], digest=sha(data), headers={
            "Content-Range": "bytes 0-%d/%d" % (h - 1, len(data))})
        assert_problem(status, hdrs, body, 413, "payload_too_large")
        assert os.listdir(tmp_path / "data" / "partial") == []
    finally:
        d.stop()


def bad_binding(case, shards, index):
    digests = {n: sha(b) for n, b in shards.items()}
    names = list(shards)
    if case == "missing_blob":
        digests[names[2]] = sha(b"never uploaded")
        return index, digests, "no blob"
    if case == "shard_not_in_map":
        del digests[names[2]]
        return index, digests, names[2]
    if case == "map_names_the_wrong_shard":
        # the map says conv0.weight is in the second shard; it is in the first
        wmap = dict(index["weight_map"], **{"conv0.weight": names[1]})
        return dict(index, weight_map=wmap), digests, "conv0.weight"
    if case == "tensor_in_two_shards":
        # the second shard holds a copy of the first's conv0.weight too
        second = st_read(shards[names[1]])
        dup = [(k, np.frombuffer(b, NP_OF[dt]).reshape(shape))
               for k, (dt, shape, b) in second.items()]
        first = st_read(shards[names[0]])["conv0.weight"]
        dup.append(("conv0.weight",
                    np.frombuffer(first[2], NP_OF[first[0]]).reshape(first[1])))
        return index, dict(digests, **{names[1]: sha(st_bytes(dup))}), "conv0.weight"
    if case == "unreferenced_shard":
        wmap = {k: (names[0] if v == names[2] else v)
                for k, v in index["weight_map"].items()}
        return dict(index, weight_map=wmap), digests, names[2]
    if case == "dotdot_name":
        wmap = {k: ("../x.safetensors" if v == names[0] else v)
                for k, v in index["weight_map"].items()}
        digests["../x.safetensors"] = digests.pop(names[0])
        return dict(index, weight_map=wmap), digests, "../x.safetensors"
    if case == "total_size":
        return dict(index, metadata={"total_size": 12345}), digests, "total_size"
    if case == "bad_digest":
        digests[names[0]] = "sha256:1234"
        return index, digests, names[0]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_blob", "shard_not_in_map",
                                  "map_names_the_wrong_shard",
                                  "tensor_in_two_shards", "unreferenced_shard",
                                  "dotdot_name", "total_size", "bad_digest"])
def test_a_bad_index_or_shard_set_is_refused_as_bad_shard_index_naming_what(daemon, ckpt,
                                                                            case):
    _, _, shards, index = ckpt
    for data in shards.values():
        assert put_blob(daemon, data)[0] == 201
    idx, digests, named = bad_binding(case, shards, index)
    if case == "tensor_in_two_shards":  # the shard with the copy, uploaded
        second = st_read(shards[list(shards)[1]])
        dup = [(k, np.frombuffer(b, NP_OF[dt]).reshape(shape))
               for k, (dt, shape, b) in second.items()]
        first = st_read(shards[list(shards)[0]])["conv0.weight"]
        dup.append(("conv0.weight",
                    np.frombuffer(first[2], NP_OF[first[0]]).reshape(first[1])))
        assert put_blob(daemon, st_bytes(dup))[0] == 201
    status, hdrs, body = daemon.request(
        "POST", "/v1/models", body={"index": idx, "shards": digests})
    doc = assert_problem(status, hdrs, body, 422, "bad_shard_index")
    assert named in doc["detail"], doc
    _, models = daemon.json("GET", "/v1/models", expect=200)
    assert models["models"] == []


def test_a_malformed_binding_body_is_a_clear_400(daemon, ckpt):
    _, _, shards, index = ckpt
    for body, code in ((b"{", "bad_json"), (b"[]", "bad_request"),
                       (json.dumps({"index": index}).encode(), "bad_request"),
                       (json.dumps({"index": index, "shards": {}, "x": 1}).encode(),
                        "bad_request")):
        status, hdrs, data = daemon.request(
            "POST", "/v1/models", body=body, headers={"Content-Type": "application/json"})
        assert_problem(status, hdrs, data, 400, code)


def test_without_a_token_shard_uploads_heads_and_bindings_are_401_and_a_read_token_403(
        tmp_path, ckpt):
    _, _, shards, index = ckpt
    d = Daemon(tmp_path / "data", env=ENV)
    d.run_cli("token", "create", "--role", "submit", "--name", "ci")
    out = d.run_cli("token", "create", "--role", "read", "--name", "viewer").stdout
    d.start()
    try:
        data = list(shards.values())[0]
        digests = {n: sha(b) for n, b in shards.items()}
        for method, path, body in (("PUT", "/v1/blobs/" + sha(data), data),
                                   ("HEAD", "/v1/blobs/" + sha(data), None),
                                   ("POST", "/v1/models",
                                    {"index": index, "shards": digests})):
            status, hdrs, resp = d.request(method, path, body=body)
            assert status == 401, (method, status)
            if method != "HEAD":
                assert_problem(status, hdrs, resp, 401, "unauthorized")
        read_token = out.strip()
        status, hdrs, resp = put_blob(d, data, token=read_token)
        assert_problem(status, hdrs, resp, 403, "forbidden")
        assert os.listdir(tmp_path / "data" / "partial") == []
    finally:
        d.stop()


# ---- lifetime of the blobs ------------------------------------------------

def blob_file(data_dir, digest):
    hx = digest[7:]
    return data_dir / "blobs" / "sha256" / hx[:2] / hx


def test_shards_live_while_their_model_does_and_unbound_uploads_expire_after_upload_ttl(
        tmp_path, ckpt):
    _, _, shards, index = ckpt
    data_dir = tmp_path / "data"
    d = Daemon(data_dir, ["--upload-ttl", "1"], env=ENV).start()
    try:
        m = upload_checkpoint(d, shards, index)
        stray = st_bytes([("x", np.arange(5, dtype=np.float32))])
        assert put_blob(d, stray)[0] == 201
        other = st_bytes([("y", np.arange(7, dtype=np.float32))])
        status, _, _ = put_blob(d, other[:20], digest=sha(other), headers={
            "Content-Range": "bytes 0-19/%d" % len(other)})
        assert status == 202
        time.sleep(1.5)
        d.stop()
        d.start()  # the start-up sweep: older than upload_ttl
        assert not blob_file(data_dir, sha(stray)).exists()
        assert os.listdir(data_dir / "partial") == []
        for data in shards.values():  # the model keeps its shards
            assert blob_file(data_dir, sha(data)).exists()
        status, _, _ = d.request("DELETE", "/v1/models/" + m["id"])
        assert status == 204
        for data in shards.values():
            assert not blob_file(data_dir, sha(data)).exists()
        assert not blob_file(data_dir, m["digest"]).exists()
    finally:
        d.stop()


def test_a_shard_two_models_share_stays_until_the_last_is_deleted(daemon, ckpt, tmp_path):
    ts, _, shards, index = ckpt
    a = upload_checkpoint(daemon, shards, index)
    # a second checkpoint: the same first two shards, another third
    names = list(shards)
    per = -(-len(ts) // 3)
    third = st_bytes(ts[2 * per:], {"format": "pt", "other": "1"})
    assert put_blob(daemon, third)[0] == 201
    digests = {n: sha(b) for n, b in shards.items()}
    digests[names[2]] = sha(third)
    status, b = bind(daemon, index, digests)
    assert status == 201 and b["id"] != a["id"]
    shared = blob_file(tmp_path / "data", digests[names[0]])
    assert daemon.request("DELETE", "/v1/models/" + a["id"])[0] == 204
    assert shared.exists()
    status, _, _ = daemon.request("HEAD", "/v1/blobs/" + digests[names[0]])
    assert status == 200


# ---- memory -----------------------------------------------------------------

def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def sanitized():
    p = subprocess.run(["ldd", os.environ.get("DECOMPD_BIN", "")],
                       capture_output=True, text=True)
    return "libasan" in p.stdout


def test_a_checkpoint_bigger_than_the_daemons_data_rlimit_decomposes_under_it(tmp_path):
    """The daemon started under RLIMIT_DATA (as `prlimit --data` sets it:
    the heap and every private writable mapping, where an upload held in
    memory, a model read whole or an output built before it is written
    would live) of 400 MiB takes a 560 MB sharded checkpoint (a 460 MB
    embedding that passes through, 24 Linear layers), decomposes it and
    serves the artifacts: uploads stream to disk, shards stay mapped
    (read-only file mappings, outside the limit by design), each layer's
    factors are written when done. The limit allows for OpenBLAS's
    reserved buffers and the threads' stacks, which it counts too."""
    if sanitized():
        pytest.skip("ASan's shadow memory counts against RLIMIT_DATA")
    layers, dim = 24, 1024
    rng = np.random.default_rng(5)
    ts = [("embed.weight",
           rng.standard_normal((112000, dim), dtype=np.float32))]
    for i in range(layers):
        w = rng.standard_normal((dim, 24)) @ rng.standard_normal((24, dim)) / 24
        ts.append(("layers.%d.proj.weight" % i, w.astype(np.float32)))
    shards, index = split(ts, 3)
    del ts
    limit = 400 * 2**20
    assert sum(len(b) for b in shards.values()) > 1.3 * limit
    d = Daemon(tmp_path / "data", ["--workers", "1", "--blas-threads", "1"],
               env=ENV, rlimit_data=limit).start()
    try:
        m = upload_checkpoint(d, shards, index)
        embed = next(b for n, b in shards.items()
                     if n.startswith("model-00001"))
        shards = None
        spec = {"layers": [{"name": "layers.%d.proj" % i, "type": "Linear",
                            "in_features": dim, "out_features": dim,
                            "bias": False} for i in range(layers)]}
        policy = {"name": "fixed", "rank": 16, "types": ["Linear"]}
        _, job = d.json("POST", "/v1/jobs", body={
            "model": m["id"], "spec": spec, "policy": policy}, expect=201)
        job = d.wait_job(job["id"], timeout=600)
        assert job["state"] == "succeeded", job
        _, info = d.json("GET", "/v1/jobs/%s/artifacts/decompose_info.json"
                         % job["id"], expect=200)
        assert info["summary"]["layers_decomposed"] == layers
        # The embedding came back as it went in.
        first = next(a["name"] for a in job["artifacts"]
                     if a["name"].startswith("model-0000"))
        status, _, body = d.request("GET", "/v1/jobs/%s/artifacts/%s"
                                    % (job["id"], first))
        assert status == 200
        got = st_read(body)["embed.weight"][2]
        want = st_read(embed)["embed.weight"][2]
        assert got == want
    finally:
        d.stop()


def test_a_sharded_checkpoint_twice_the_memory_bound_decomposes_within_it(tmp_path):
    """~200 MB over 4 shards (96 MB of Linear layers, an embedding that
    passes through), uploaded and decomposed by a daemon whose peak RSS
    (VmHWM, the kernel's high-water mark of the whole process) must stay
    under 100 MiB: uploads stream to disk, shards stay mapped, each layer's
    factors are written when done. RSS is the measure, not RLIMIT_AS: the
    address space counts the mapped shards themselves (the whole model, by
    design) and OpenBLAS's reserved buffers."""
    layers, dim = 24, 1024
    rng = np.random.default_rng(3)
    ts = [("embed.weight", rng.standard_normal((25000, dim)).astype(np.float32))]
    for i in range(layers):
        w = rng.standard_normal((dim, 24)) @ rng.standard_normal((24, dim)) / 24
        ts.append(("layers.%d.proj.weight" % i, w.astype(np.float32)))
        ts.append(("layers.%d.proj.bias" % i, np.zeros(dim, np.float32)))
    shards, index = split(ts, 4)
    del ts
    size = sum(len(b) for b in shards.values())
    assert size > 190e6
    bound = 100 * 2**20
    d = Daemon(tmp_path / "data", ["--workers", "1", "--blas-threads", "1"],
               env=ENV).start()
    try:
        base = vm_hwm(d.proc.pid)
        m = upload_checkpoint(d, shards, index)
        shards = None
        spec = {"layers": [{"name": "layers.%d.proj" % i, "type": "Linear",
                            "in_features": dim, "out_features": dim, "bias": True}
                           for i in range(layers)]}
        policy = {"name": "fixed", "rank": 16, "types": ["Linear"]}
        _, job = d.json("POST", "/v1/jobs", body={
            "model": m["id"], "spec": spec, "policy": policy,
            "shard_bytes": 64 * 2**20}, expect=201)
        job = d.wait_job(job["id"], timeout=600)
        assert job["state"] == "succeeded", job
        peak = vm_hwm(d.proc.pid)
        assert len([a for a in job["artifacts"] if a["name"].startswith("model-")]) == 2
        _, info = d.json("GET", "/v1/jobs/%s/artifacts/decompose_info.json" % job["id"],
                         expect=200)
        assert info["summary"]["layers_decomposed"] == layers
        assert 0 < job["peak_rss_bytes"] <= peak
        if not sanitized():
            assert peak < bound, (base, peak, size)
    finally:
        d.stop()
