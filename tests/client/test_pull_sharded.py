"""A sharded checkpoint through the whole service and back into training:
decompctl upload DIR (shards as blobs, bound by the index), a job whose
output is sharded (several shards by the job's shard_bytes), then
Client.pull loads those shards into the user's module with decompd's own
safetensors reader. The module equals the in-process engine's result on
the same weights bit for bit (one BLAS thread on both sides, as
test_identity.py explains)."""
import json
import os
import struct

import torch
import torch.nn as nn

from conftest import client_env, ctl, url_of

INDEX = "model.safetensors.index.json"
POLICY = {"name": "fixed", "rank": 12, "types": ["Linear"],
          "require_cheaper": False}


def model():
    torch.manual_seed(3)
    return nn.Sequential(*[nn.Linear(96, 96) for _ in range(5)])


def st_bytes(items):
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, t in items:
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [pos, pos + t.numel() * 4]}
        pos += t.numel() * 4
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(
        t.contiguous().numpy().tobytes() for _, t in items)


def write_sharded(m, folder, nshards=3):
    items = list(m.state_dict().items())
    os.makedirs(folder, exist_ok=True)
    per = -(-len(items) // nshards)
    wmap, total = {}, 0
    for s in range(nshards):
        name = "model-%05d-of-%05d.safetensors" % (s + 1, nshards)
        part = items[s * per:(s + 1) * per]
        with open(os.path.join(folder, name), "wb") as f:
            f.write(st_bytes(part))
        for k, t in part:
            wmap[k] = name
            total += t.numel() * 4
    with open(os.path.join(folder, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f)


def test_a_sharded_checkpoint_uploaded_decomposed_and_pulled_equals_the_in_process_result(
        daemon, tmp_path, monkeypatch):
    from decompd.client import Client
    from decompd.spec import layer_spec, walk
    from decompd.tensor_decompose import auto_decomposition

    m = model()
    write_sharded(m, tmp_path / "ckpt")
    env = client_env(daemon, tmp_path / "cache")
    p = ctl("upload", tmp_path / "ckpt", "--json", env=env)
    assert p.returncode == 0, p.stderr
    mid = json.loads(p.stdout)["id"]
    # A job on the sharded model, its output cut into several shards.
    _, job = daemon.json("POST", "/v1/jobs", body={
        "model": mid, "spec": layer_spec(walk(m)), "policy": POLICY,
        "shard_bytes": 16000}, expect=201)
    monkeypatch.setenv("DECOMPD_CACHE", str(tmp_path / "cache"))
    c = Client(url_of(daemon))
    assert c.wait(job["id"], progress=False, timeout=300).state == "succeeded"
    _, j = daemon.json("GET", "/v1/jobs/" + job["id"], expect=200)
    names = [a["name"] for a in j["artifacts"]]
    shards = [n for n in names if n.endswith(".safetensors")]
    assert INDEX in names and len(shards) >= 3, names

    pulled, changes = c.pull(model(), job["id"])
    local, local_changes = auto_decomposition(
        model(), policy=POLICY,
        decompose_info_path=str(tmp_path / "local_info.json"))
    assert changes == local_changes
    sp, sl = pulled.state_dict(), local.state_dict()
    assert list(sp) == list(sl)
    for k in sl:
        assert sp[k].dtype == sl[k].dtype and torch.equal(sp[k], sl[k]), k
    # and the pulled module runs: the pairs stand in for the Linears
    x = torch.randn(4, 96)
    assert torch.equal(pulled(x), local(x))
