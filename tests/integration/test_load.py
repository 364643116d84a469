"""Load: 8 uploads and 200 status requests at once all succeed; memory stays
flat in upload size (a 1 GiB upload keeps the daemon under 100 MB RSS)."""
import hashlib
import io
import json
import struct
import threading
import time

import torch

RSS_LIMIT_KB = 100 * 1024


def safetensors_header(name, nbytes):
    hdr = json.dumps({name: {"dtype": "F32", "shape": [nbytes // 4],
                             "data_offsets": [0, nbytes]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    return struct.pack("<Q", len(hdr)) + hdr


def test_8_uploads_and_200_status_requests_at_once(daemon):
    torch.manual_seed(3)
    bodies = []
    for i in range(8):
        buf = io.BytesIO()
        torch.save({"conv%d.weight" % i: torch.randn(256, 256, 3, 3)}, buf)
        bodies.append(buf.getvalue())
    status, m0 = daemon.upload(bodies[0], name="seed")
    assert status == 201
    results, errors = [], []
    start = threading.Barrier(208)

    def upload(i):
        try:
            start.wait()
            results.append(("upload", i) + tuple(daemon.upload(bodies[i], name="u%d" % i)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def status_req(i):
        try:
            start.wait()
            path = ("/v1/models/" + m0["id"]) if i % 2 else "/v1/jobs?limit=5"
            s, _, _ = daemon.request("GET", path, timeout=300)
            results.append(("status", i, s, None))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=status_req, args=(i,)) for i in range(200)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.time() - t0
    assert errors == [], errors[:5]
    ups = [r for r in results if r[0] == "upload"]
    sts = [r for r in results if r[0] == "status"]
    assert len(ups) == 8 and len(sts) == 200
    assert all(r[2] in (200, 201) for r in ups), [r[:3] for r in ups]
    for r in ups:  # the digest computed on the fly is the content's
        assert r[3]["digest"] == "sha256:" + hashlib.sha256(bodies[r[1]]).hexdigest()
    assert all(r[2] == 200 for r in sts), [r for r in sts if r[2] != 200][:5]
    _, models = daemon.json("GET", "/v1/models", expect=200)
    assert len(models["models"]) == 8  # bodies[0] deduplicated with "seed"
    print("208 concurrent requests in %.2f s" % elapsed)


def test_rss_stays_flat_for_a_1gib_upload(daemon):
    nbytes = 1 << 30
    head = safetensors_header("big", nbytes)
    peak = [daemon.rss_kb()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], daemon.rss_kb())
            time.sleep(0.02)
    t = threading.Thread(target=sample)
    t.start()
    try:
        c = daemon.conn(timeout=300)
        c.putrequest("POST", "/v1/models?name=big")
        c.putheader("Content-Type", "application/octet-stream")
        c.putheader("Content-Length", str(len(head) + nbytes))
        c.endheaders()
        c.send(head)
        chunk = bytes(range(256)) * 4096  # 1 MiB
        want = hashlib.sha256(head)
        t0 = time.time()
        for _ in range(nbytes // len(chunk)):
            c.send(chunk)
            want.update(chunk)
        r = c.getresponse()
        body = json.loads(r.read())
        secs = time.time() - t0
        c.close()
    finally:
        done.set()
        t.join()
    assert r.status == 201, body
    assert body["size"] == len(head) + nbytes and body["format"] == "safetensors"
    assert body["digest"] == "sha256:" + want.hexdigest()
    print("1 GiB upload: %.1f s, %.0f MB/s, peak RSS %d kB" % (secs, 1024 / secs, peak[0]))
    assert peak[0] < RSS_LIMIT_KB, "peak RSS %d kB" % peak[0]
    # downloading it back streams from the file too
    c = daemon.conn(timeout=300)
    c.request("GET", "/v1/models/%s/content" % body["id"])
    r = c.getresponse()
    got = 0
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        got += len(b)
        peak[0] = max(peak[0], daemon.rss_kb())
    c.close()
    assert got == len(head) + nbytes
    assert peak[0] < RSS_LIMIT_KB, "peak RSS %d kB" % peak[0]
