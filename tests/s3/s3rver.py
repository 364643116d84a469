"""A real S3-compatible server for the tests: s3rver (npm; installed into
tests/s3/node_modules by `npm ci` on first use, one process at a time) on
127.0.0.1 with a port the kernel picks and a temporary data folder holding
the buckets asked for, behind the SigV4 checker of sigv4_check.py (s3rver
checks no V4 signature; the checker refuses what S3 would).

    with S3rver(["decompd-test"]) as s3:
        s3.endpoint   # through the checker: what decompd is given
        s3.direct     # s3rver itself (no signature needed)
        s3.dir        # its data folder (objects as BUCKET/KEY._S3rver_object)
        s3.proxy      # the checker (refused, seen)

Used by test_s3.py, test_daemon_s3.py and the integration harness's
PostgreSQL + S3 runs (pg_server.py)."""
import os
import re
import shutil
import subprocess
import tempfile
import time

import sigv4_check

HERE = os.path.dirname(os.path.abspath(__file__))
# s3rver's one account (lib/models/account.js)
ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"
INSTALL_LIMIT_S = 600


class S3rverError(RuntimeError):
    pass


def installed():
    return os.path.exists(os.path.join(HERE, "node_modules", "s3rver",
                                       "package.json"))


def npm_ci():
    """`npm ci` into tests/s3/node_modules unless it is there, under a lock
    directory so that parallel tests install once."""
    if installed():
        return
    lock = os.path.join(HERE, "node_modules.lock")
    deadline = time.monotonic() + INSTALL_LIMIT_S
    while True:
        try:
            os.mkdir(lock)
            break
        except FileExistsError:
            if installed():
                return
            try:  # an install killed half-way leaves its lock behind
                if time.time() - os.stat(lock).st_mtime > INSTALL_LIMIT_S:
                    os.rmdir(lock)
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise S3rverError(f"waited {INSTALL_LIMIT_S} s for {lock} "
                                  "(stale? remove it)")
            time.sleep(0.5)
    try:
        if not installed():
            npm = shutil.which("npm")
            if not npm:
                raise S3rverError("npm not found: the s3 tests install "
                                  "s3rver with npm ci (Node.js and npm are "
                                  "needed)")
            print(f"s3 tests: npm ci in {HERE}", flush=True)
            subprocess.run([npm, "ci", "--no-audit", "--no-fund",
                            "--loglevel=error"], cwd=HERE, check=True,
                           stdin=subprocess.DEVNULL, timeout=INSTALL_LIMIT_S)
    finally:
        try:
            os.rmdir(lock)
        except FileNotFoundError:
            pass


class S3rver:
    def __init__(self, buckets):
        self.buckets = list(buckets)
        self.proc = self.proxy = self.log = None
        self.dir = self.endpoint = self.direct = None

    def start(self):
        node = shutil.which("node")
        if not node:
            raise S3rverError("node not found: the s3 tests run s3rver on "
                              "Node.js")
        npm_ci()
        self.dir = tempfile.mkdtemp(prefix="decompd-s3rver-")
        self.log = open(self.dir + ".log", "w+")
        args = [node, "--openssl-legacy-provider",
                os.path.join(HERE, "node_modules", "s3rver", "bin",
                             "s3rver.js"),
                "--directory", self.dir, "--address", "127.0.0.1", "--port",
                "0", "--silent", "--no-vhost-buckets"]
        for b in self.buckets:
            args += ["--configure-bucket", b]
        # --openssl-legacy-provider: s3rver makes ListObjectsV2 continuation
        # tokens with DES, which OpenSSL 3 keeps in its legacy provider;
        # without it a truncated listing answers 500.
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=self.log,
                                     stdin=subprocess.DEVNULL, text=True)
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"S3rver listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        if port is None:
            self.log.seek(0)
            err = self.log.read()[-2000:]
            self.stop()
            raise S3rverError("s3rver did not start: " + err)
        self.direct = f"http://127.0.0.1:{port}"
        self.proxy = sigv4_check.Proxy(("127.0.0.1", port),
                                       {ACCESS_KEY: SECRET_KEY})
        self.endpoint = self.proxy.start()
        return self

    def stop(self):
        if self.proxy:
            self.proxy.stop()
            self.proxy = None
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.log:
            self.log.close()
            os.unlink(self.log.name)
            self.log = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
