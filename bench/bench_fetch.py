#!/usr/bin/env python3
"""Fetching a job's artifacts several at a time vs one at a time, measured
side by side in one run against a real decompd over loopback.

A job over a model of --mib MiB (a small conv that is decomposed, and
pass-through tensors holding the bulk) has three artifacts: the .pth and
.safetensors weights (each about the model's size) and the info file.
Each figure is the best of --repeat fetches into an empty cache:

  direct  loopback as it is: bounded by the machine (SHA-256, writes, the
          daemon's sends), so the ratio says what threads buy on its cores
  paced   through a proxy that caps each connection at --link-mbps MB/s,
          as a long or shaped network path does: the ratio says what
          parallel transfers buy where each connection is the bottleneck

for decompctl fetch --parallel 1 vs 4 and decompd.client's
Client.fetch(parallel=1) vs 4.

usage: /usr/bin/python3 bench/bench_fetch.py [--build build-test] [--mib 128]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))


class Pacer:
    """A TCP proxy capping each connection's answers at `mbps` MB/s."""

    def __init__(self, port, mbps):
        self.port, self.rate = port, mbps * 1e6
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(c, u, None),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, self.rate),
                             daemon=True).start()

    @staticmethod
    def _pipe(src, dst, rate):
        t0, sent = time.monotonic(), 0
        try:
            while True:
                b = src.recv(1 << 16)
                if not b:
                    break
                dst.sendall(b)
                if rate:
                    sent += len(b)
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def start_daemon(binary, data_dir):
    log_path = data_dir + ".log"
    log = open(log_path, "wb")
    p = subprocess.Popen([binary, "--data-dir", data_dir, "--listen",
                          "127.0.0.1:0", "--workers", "1", "--blas-threads",
                          "1", "--max-upload-bytes", "8G"],
                         stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(600):
        m = re.search(rb"event=listening addr=127\.0\.0\.1:(\d+)",
                      open(log_path, "rb").read())
        if m:
            return p, int(m.group(1))
        time.sleep(0.05)
    raise RuntimeError("decompd did not start")


def make_model(folder, mib):
    import torch
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    state = {"conv.weight": conv.weight.detach(),
             "conv.bias": conv.bias.detach()}
    per = (mib << 20) // 4 // 4
    for i in range(4):
        state[f"table{i}"] = torch.randn(per)
    w = os.path.join(folder, "w.pth")
    torch.save(state, w)
    spec = {"layers": [{"name": "conv", "type": "Conv2d", "in_channels": 64,
                        "out_channels": 64, "kernel_size": [3, 3],
                        "stride": [1, 1], "padding": [1, 1],
                        "dilation": [1, 1], "groups": 1, "bias": True,
                        "padding_mode": "zeros"}]}
    s = os.path.join(folder, "spec.json")
    with open(s, "w") as f:
        json.dump(spec, f)
    return w, s


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        times.append(fn())
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build-test"))
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--link-mbps", type=float, default=40.0)
    a = ap.parse_args()
    ctl = os.path.join(a.build, "src", "cli", "decompctl")
    binary = os.path.join(a.build, "src", "server", "decompd")
    tmp = tempfile.mkdtemp(prefix="decompd-bench-fetch-")
    proc = None
    try:
        proc, port = start_daemon(binary, os.path.join(tmp, "var"))
        url = "http://127.0.0.1:%d" % port
        env = dict(os.environ, DECOMPD_URL=url,
                   DECOMPD_CACHE=os.path.join(tmp, "c0"))
        w, s = make_model(tmp, a.mib)
        job = subprocess.run([ctl, "submit", w, "--spec", s, "--quiet"],
                             env=env, check=True, capture_output=True,
                             text=True).stdout.strip()
        subprocess.run([ctl, "wait", job, "--quiet"], env=env, check=True,
                       capture_output=True)
        arts = json.loads(subprocess.run(
            [ctl, "status", job, "--json"], env=env, check=True,
            capture_output=True, text=True).stdout)["artifacts"]
        total = sum(x["size"] for x in arts)
        print("job %s: %d artifacts, %.1f MiB in all (%s)" % (
            job, len(arts), total / 2**20,
            ", ".join("%s %.1f MiB" % (x["name"], x["size"] / 2**20)
                      for x in arts)))

        def run_c(u, n):
            cache = os.path.join(tmp, "cache")
            shutil.rmtree(cache, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([ctl, "fetch", job, "--parallel", str(n),
                            "--quiet"], check=True, capture_output=True,
                           env=dict(env, DECOMPD_URL=u, DECOMPD_CACHE=cache))
            return time.perf_counter() - t0

        def run_py(u, n):
            from decompd.client import Client
            cache = os.path.join(tmp, "cache")
            shutil.rmtree(cache, ignore_errors=True)
            t0 = time.perf_counter()
            Client(u, cache=cache).fetch(job, parallel=n)
            return time.perf_counter() - t0

        pacer = Pacer(port, a.link_mbps)
        try:
            print("%-28s %10s %10s %8s" % ("", "1 at once", "4 at once",
                                           "speedup"))
            for label, u in (("direct", url),
                             ("paced %g MB/s/conn" % a.link_mbps,
                              pacer.url)):
                for who, fn in (("decompctl", run_c), ("python", run_py)):
                    t1 = best(lambda: fn(u, 1), a.repeat)
                    t4 = best(lambda: fn(u, 4), a.repeat)
                    print("%-28s %9.2fs %9.2fs %7.2fx   (%.0f / %.0f MB/s)" % (
                        "%s %s" % (who, label), t1, t4, t1 / t4,
                        total / t1 / 1e6, total / t4 / 1e6))
        finally:
            pacer.close()
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
