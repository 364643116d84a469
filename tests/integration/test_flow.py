"""The whole flow over HTTP: upload torchvision resnet18 weights, submit a
job with a spec made here from the live module, wait for it, download the
artifacts (ETag, If-None-Match, Range), and check that the weights load in
PyTorch with weights_only=True and match the info file."""
import io
import json
import os
import struct

import numpy as np
import torch

from conftest import conv_spec, resnet18_upload

SAFE_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
               "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(data):
    """A small independent safetensors reader (header + numpy.frombuffer)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[base + a:base + b], dtype=SAFE_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def test_whole_flow_resnet18(daemon):
    model, m = resnet18_upload(daemon)
    assert m["format"] == "pth" and m["tensors"] == len(model.state_dict())
    assert m["digest"].startswith("sha256:") and m["name"] == "resnet18"

    # the same bytes again: deduplicated, 200, same model
    body = daemon.request("GET", "/v1/models/%s/content" % m["id"])[2]
    status, again = daemon.upload(body)
    assert status == 200 and again["id"] == m["id"]

    spec = conv_spec(model)
    status, job = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": spec,
                                                    "policy": "budget"})
    assert status == 201, job
    # an identical submission returns the same job
    status, same = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": spec,
                                                     "policy": {"name": "budget"}})
    assert status == 200 and same["id"] == job["id"]

    done = daemon.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["error"] is None and done["attempts"] == 1
    assert done["progress"]["layers_done"] == done["progress"]["layers_total"] == 20
    assert done["progress"]["current"] is None  # only while running
    assert len(done["layers"]) == 20 and done["seconds"] > 0
    names = {a["name"]: a for a in done["artifacts"]}
    assert set(names) == {"decomposed_weights.pth", "decomposed_weights.safetensors",
                          "decompose_info.json"}

    base = "/v1/jobs/%s/artifacts/" % job["id"]
    status, hdrs, info_bytes = daemon.request("GET", base + "decompose_info.json")
    assert status == 200 and hdrs["etag"] == '"%s"' % names["decompose_info.json"]["digest"]
    info = json.loads(info_bytes)
    assert info["format"] == "decompd.decompose_info"
    assert info["source"]["digest"] == m["digest"]

    status, hdrs, pth = daemon.request("GET", base + "decomposed_weights.pth")
    assert status == 200 and len(pth) == names["decomposed_weights.pth"]["size"]
    import hashlib
    assert "sha256:" + hashlib.sha256(pth).hexdigest() == names["decomposed_weights.pth"]["digest"]

    # conditional and partial downloads
    etag = hdrs["etag"]
    status, _, body = daemon.request("GET", base + "decomposed_weights.pth",
                                     headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    status, h2, part = daemon.request("GET", base + "decomposed_weights.pth",
                                      headers={"Range": "bytes=100-1099"})
    assert status == 206 and part == pth[100:1100]
    assert h2["content-range"] == "bytes 100-1099/%d" % len(pth)
    status, _, tail = daemon.request("GET", base + "decomposed_weights.pth",
                                     headers={"Range": "bytes=-10"})
    assert status == 206 and tail == pth[-10:]
    status, _, _ = daemon.request("GET", base + "decomposed_weights.pth",
                                  headers={"Range": "bytes=%d-" % len(pth)})
    assert status == 416

    # the weights load with weights_only=True and match the info file
    sd = torch.load(io.BytesIO(pth), weights_only=True)
    assert set(info["changes"]) == {l["name"] for l in info["layers"]}
    assert info["changes"], "budget decomposed nothing"
    for layer in info["layers"]:
        name, rank = layer["name"], layer["rank"]
        assert name + ".weight" not in sd
        v, h = sd[name + ".0.weight"], sd[name + ".1.weight"]
        mods = {mm["name"]: mm for mm in layer["modules"]}
        assert info["changes"][name] == [name + ".0", name + ".1"]
        first, second = mods[name + ".0"], mods[name + ".1"]
        assert v.shape[0] == first["out_channels"] and h.shape[1] == second["in_channels"]
        assert list(v.shape[2:]) == list(first["kernel_size"])
        assert list(h.shape[2:]) == list(second["kernel_size"])
        assert rank in (v.shape[0], h.shape[1])
    orig = model.state_dict()
    for k, t in orig.items():
        conv = k.rsplit(".", 1)[0]
        if conv not in info["changes"]:
            assert torch.equal(sd[k], t), k

    # rebuild the decomposed model and load the weights strictly
    for layer in info["layers"]:
        parent = model
        *path, last = layer["name"].split(".")
        for p in path:
            parent = getattr(parent, p)
        convs = []
        for mm in layer["modules"]:
            convs.append(torch.nn.Conv2d(mm["in_channels"], mm["out_channels"],
                                         tuple(mm["kernel_size"]), tuple(mm["stride"]),
                                         tuple(mm["padding"]), tuple(mm["dilation"]),
                                         mm["groups"], mm["bias"], mm["padding_mode"]))
        setattr(parent, last, torch.nn.Sequential(*convs))
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()

    # the safetensors artifact holds the same tensors
    st = read_safetensors(daemon.request("GET", base + "decomposed_weights.safetensors")[2])
    assert set(st) == set(sd)
    for k, t in sd.items():
        assert np.array_equal(st[k], t.numpy()), k

    # listing, filtering, paging, deleting
    _, lst = daemon.json("GET", "/v1/jobs?state=succeeded&limit=1", expect=200)
    assert [j["id"] for j in lst["jobs"]] == [job["id"]]
    _, lst = daemon.json("GET", "/v1/jobs?state=queued", expect=200)
    assert lst["jobs"] == [] and lst["next_cursor"] is None
    status, _ = daemon.json("DELETE", "/v1/models/" + m["id"])
    assert status == 204
    status, _ = daemon.json("DELETE", "/v1/jobs/" + job["id"])
    assert status == 204
    assert daemon.request("GET", "/v1/jobs/" + job["id"])[0] == 404
    blobs = [f for _, _, fs in os.walk(os.path.join(daemon.data_dir, "blobs")) for f in fs]
    assert blobs == [], blobs

    # metrics saw it
    status, hdrs, text = daemon.request("GET", "/metrics")
    text = text.decode()
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    assert 'decompd_http_requests_total{route="/v1/jobs",method="POST",status="201"} 1' in text
    assert "decompd_layer_seconds_count 20" in text
    assert 'decompd_jobs_finished_total{state="succeeded"} 1' in text
    assert "decompd_queue_depth 0" in text


def test_cancel_queued_and_paging(daemon_factory):
    # no workers' time to spare: one worker busy, the rest stays queued
    d = daemon_factory(args=["--workers", "1"]).start()
    model, m = resnet18_upload(d)
    spec = conv_spec(model)
    ids = []
    for r in (8, 16, 24, 32):
        status, j = d.json("POST", "/v1/jobs", {"model": m["id"], "spec": spec,
                                                 "policy": {"name": "fixed", "rank": r}})
        assert status == 201
        ids.append(j["id"])
    status, c = d.json("POST", "/v1/jobs/%s/cancel" % ids[-1])
    assert status in (200, 202)
    final = d.wait_job(ids[-1])
    assert final["state"] in ("cancelled", "succeeded")
    # model in use by queued jobs cannot be deleted
    for i in ids[:-1]:
        d.json("POST", "/v1/jobs/%s/cancel" % i)
    for i in ids:
        d.wait_job(i)
    seen, cursor = [], None
    while True:
        q = "/v1/jobs?limit=3" + ("&cursor=" + cursor if cursor else "")
        _, page = d.json("GET", q, expect=200)
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_spec_attached_to_the_model(daemon):
    model, m = resnet18_upload(daemon)
    assert m["has_spec"] is False
    spec = conv_spec(model)
    status, hdrs, body = daemon.request("GET", "/v1/models/%s/spec" % m["id"])
    assert status == 404
    status, hdrs, body = daemon.request("POST", "/v1/jobs", body={"model": m["id"]})
    assert status == 400 and b"bad_spec" in body
    bad = {"layers": [dict(spec["layers"][0], out_channels=3)]}
    status, hdrs, body = daemon.request("PUT", "/v1/models/%s/spec" % m["id"], body=bad)
    assert status == 422 and b"spec_mismatch" in body
    status, canon = daemon.json("PUT", "/v1/models/%s/spec" % m["id"], spec, expect=200)
    assert [l["name"] for l in canon["layers"]] == [l["name"] for l in spec["layers"]]
    assert daemon.json("GET", "/v1/models/%s/spec" % m["id"], expect=200)[1] == canon
    assert daemon.json("GET", "/v1/models/" + m["id"], expect=200)[1]["has_spec"] is True
    # a job without a spec uses the model's; the same spec given explicitly
    # (in another spelling) is the same job
    status, j1 = daemon.json("POST", "/v1/jobs", {"model": m["id"], "policy": "vbmf"})
    assert status == 201, j1
    spec2 = {"layers": [dict(l, kernel_size=l["kernel_size"][0]) for l in spec["layers"]]}
    status, j2 = daemon.json("POST", "/v1/jobs", {"model": m["id"], "spec": spec2,
                                                   "policy": "vbmf"})
    assert status == 200 and j2["id"] == j1["id"]
    assert daemon.wait_job(j1["id"])["state"] == "succeeded"


def test_job_events_stream_live_until_the_job_ends(daemon):
    """Server-sent events: the job as it changes (state, layers done, the
    layer under way), the last one final, then the stream ends; a finished
    job's stream is its final state alone; an unknown job is a 404."""
    model, m = resnet18_upload(daemon)
    status, job = daemon.json("POST", "/v1/jobs", {
        "model": m["id"], "spec": conv_spec(model),
        "policy": {"name": "energy", "energy": 0.9}})
    assert status == 201, job
    ctype, events = daemon.events(job["id"])
    assert ctype.startswith("text/event-stream")
    assert events and all(e == "job" for e, _ in events), events
    jobs = [d for _, d in events]
    order = {"queued": 0, "running": 1, "succeeded": 2}
    assert [order[j["state"]] for j in jobs] == sorted(order[j["state"]] for j in jobs)
    assert jobs[-1]["state"] == "succeeded" and jobs[-1]["progress"]["current"] is None
    done = [j["progress"]["layers_done"] for j in jobs]
    assert done == sorted(done) and done[-1] == 20, done
    assert len(jobs) > 2, "changes while it ran: %d events" % len(jobs)
    # after the end: one event, the final state
    _, again = daemon.events(job["id"])
    assert len(again) == 1 and again[0][1]["state"] == "succeeded"
    status, _, body = daemon.request("GET", "/v1/jobs/j_0000000000000000/events")
    assert status == 404 and b"not_found" in body
