#!/usr/bin/env python3
"""decompd service benchmarks, each a ratio against a peer measured in the
same run on the same machine, over loopback:

  upload    1 GiB upload (curl -T) into decompd (stream to disk + SHA-256 +
            fsync + validation) vs `openssl dgst -sha256` of the same file
            (page cache warm): throughput ratio, goal >= 0.7
  download  the same 1 GiB downloaded from decompd vs from nginx (Debian,
            sendfile on): throughput ratio, goal >= 0.7
  status    GET /v1/jobs/{id} with wrk, 64 connections, 10 s: requests/s
            (vs GET of a small static file from nginx, for scale)

usage: bench/daemon_bench.py [--bin build/src/server/decompd] [--size-mib 1024]
needs: curl, openssl, nginx, wrk (Debian packages)
"""
import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def timed(cmd):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def make_safetensors(path, nbytes):
    hdr = json.dumps({"big": {"dtype": "F32", "shape": [nbytes // 4],
                              "data_offsets": [0, nbytes]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr)
        for _ in range(nbytes >> 20):
            f.write(chunk)


def start_decompd(binary, data_dir, log_path):
    log = open(log_path, "wb")
    p = subprocess.Popen([binary, "--data-dir", data_dir, "--listen", "127.0.0.1:0",
                          "--log-level", "warn", "--max-upload-bytes", "8G"],
                         stdout=subprocess.DEVNULL, stderr=log)
    # warn level hides the listening line; find the port from /proc instead
    deadline = time.time() + 20
    while time.time() < deadline:
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if "pid=%d," % p.pid in line:
                return p, int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        time.sleep(0.05)
    p.kill()
    sys.exit("decompd did not start: " + open(log_path).read())


def start_nginx(root, workdir, port):
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
daemon off;
pid %(w)s/nginx.pid;
error_log %(w)s/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path %(w)s/body;
  proxy_temp_path %(w)s/proxy;
  fastcgi_temp_path %(w)s/fcgi;
  uwsgi_temp_path %(w)s/uwsgi;
  scgi_temp_path %(w)s/scgi;
  server { listen 127.0.0.1:%(p)d; root %(r)s; }
}
""" % {"w": workdir, "p": port, "r": root})
    p = subprocess.Popen(["nginx", "-p", workdir, "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p
        except OSError:
            time.sleep(0.05)
    sys.exit("nginx did not start")


def wrk(url, conns=64, secs=10):
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % secs, url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


def post_json(port, path, doc):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bin", default=os.path.join(here, "..", "build", "src", "server",
                                                  "decompd"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    for tool in ("curl", "openssl", "nginx", "wrk", "ss"):
        if not shutil.which(tool):
            sys.exit("needs %s" % tool)
    work = tempfile.mkdtemp(prefix="decompd-bench-")
    os.chmod(work, 0o755)  # nginx workers may run as another user
    www = os.path.join(work, "www")
    os.makedirs(www)
    big = os.path.join(www, "big.safetensors")
    nbytes = a.size_mib << 20
    make_safetensors(big, nbytes)
    size = os.path.getsize(big)
    mib = size / (1 << 20)
    results = {}
    dp = ng = None
    try:
        # peer 1: openssl sha256 of the file (warm cache, best of 3)
        subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)
        t_ssl = min(timed(["openssl", "dgst", "-sha256", big])[0] for _ in range(3))

        dp, port = start_decompd(a.bin, os.path.join(work, "var"), os.path.join(work, "d.log"))
        url = "http://127.0.0.1:%d" % port
        ups = []
        for i in range(3):
            # a fresh copy each time would defeat dedup timing; delete between runs
            t, out = timed(["curl", "-sS", "-f", "-T", big, "-X", "POST",
                            "-H", "Content-Type: application/octet-stream",
                            url + "/v1/models?name=big"])
            model = json.loads(out)
            ups.append(t)
            if i < 2:
                subprocess.run(["curl", "-sS", "-f", "-X", "DELETE",
                                url + "/v1/models/" + model["id"]], check=True)
        t_up = min(ups)
        results["upload"] = (mib / t_up, mib / t_ssl)

        # peer 2: nginx serving the same file (sendfile)
        nport = free_port()
        ng = start_nginx(www, work, nport)
        def dl(u):
            return min(timed(["curl", "-sS", "-f", "-o", "/dev/null", u])[0] for _ in range(3))
        t_dd = dl(url + "/v1/models/%s/content" % model["id"])
        t_ng = dl("http://127.0.0.1:%d/big.safetensors" % nport)
        results["download"] = (mib / t_dd, mib / t_ng)

        # status requests: a real job's status
        import io  # noqa: F401  (small model below is built by hand)
        w = struct.pack("<" + "f" * (16 * 16 * 9), *[((i * 7919) % 101) / 101.0
                                                      for i in range(16 * 16 * 9)])
        hdr = json.dumps({"conv.weight": {"dtype": "F32", "shape": [16, 16, 3, 3],
                                          "data_offsets": [0, len(w)]}}).encode()
        hdr += b" " * (-len(hdr) % 8)
        small = os.path.join(work, "small.safetensors")
        with open(small, "wb") as f:
            f.write(struct.pack("<Q", len(hdr)) + hdr + w)
        _, out = timed(["curl", "-sS", "-f", "-T", small, "-X", "POST", url + "/v1/models"])
        m = json.loads(out)
        spec = {"layers": [{"name": "conv", "type": "Conv2d", "in_channels": 16,
                            "out_channels": 16, "kernel_size": 3, "stride": 1,
                            "padding": 1, "dilation": 1, "groups": 1, "bias": False,
                            "padding_mode": "zeros"}]}
        job = post_json(port, "/v1/jobs", {"model": m["id"], "spec": spec,
                                           "policy": {"name": "fixed", "rank": 4}})
        with open(os.path.join(www, "status.json"), "w") as f:
            f.write(json.dumps(job))
        rps, bad = wrk(url + "/v1/jobs/" + job["id"])
        rps_ng, _ = wrk("http://127.0.0.1:%d/status.json" % nport)
        results["status"] = (rps, rps_ng, bad)
    finally:
        for p in (dp, ng):
            if p:
                p.terminate()
                p.wait()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    up, ssl = results["upload"]
    dd, ngx = results["download"]
    rps, rps_ng, bad = results["status"]
    print("decompd service benchmarks (%d MiB file, loopback, %d cores)" % (a.size_mib,
                                                                           os.cpu_count()))
    print("  upload   decompd %7.0f MiB/s   openssl dgst -sha256 %7.0f MiB/s   ratio %.2f"
          % (up, ssl, up / ssl))
    print("  download decompd %7.0f MiB/s   nginx                %7.0f MiB/s   ratio %.2f"
          % (dd, ngx, dd / ngx))
    print("  status   decompd %7.0f req/s   nginx static file    %7.0f req/s   ratio %.2f"
          "  (wrk -t2 -c64 -d10s, non-2xx: %d)" % (rps, rps_ng, rps / rps_ng, bad))


if __name__ == "__main__":
    main()
