"""The store's S3 client against a real S3-compatible server (suite 's3').

Starts s3rver (npm, installed into tests/s3/node_modules by `npm ci` on the
first run, one process at a time) on 127.0.0.1 with a port the kernel picks
and a temporary data folder holding one bucket, then runs each test case
of the C program test_s3 (S3_TEST_BIN) alone, with CK_RUN_CASE, as one
pytest test of the same name.

    S3_TEST_BIN=build/tests/s3/test_s3 python3 -m pytest tests/s3/test_s3.py
"""
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "decompd-test"
# s3rver's one account (lib/models/account.js)
ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"
INSTALL_LIMIT_S = 600


def c_cases():
    """The test cases of test_s3.c, in its order: ONE(name) lines."""
    with open(os.path.join(HERE, "test_s3.c")) as f:
        return re.findall(r"^\s*ONE\((\w+)\);", f.read(), re.M)


def installed():
    return os.path.exists(os.path.join(HERE, "node_modules", "s3rver",
                                       "package.json"))


def npm_ci():
    """`npm ci` into tests/s3/node_modules unless it is there, under a lock
    directory so that parallel meson tests install once."""
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
                pytest.fail(f"waited {INSTALL_LIMIT_S} s for {lock} "
                            "(stale? remove it)")
            time.sleep(0.5)
    try:
        if not installed():
            npm = shutil.which("npm")
            if not npm:
                pytest.fail("npm not found: the s3 tests install s3rver "
                            "with npm ci (Node.js and npm are needed)")
            print(f"s3 tests: npm ci in {HERE}", flush=True)
            subprocess.run([npm, "ci", "--no-audit", "--no-fund",
                            "--loglevel=error"], cwd=HERE, check=True,
                           stdin=subprocess.DEVNULL, timeout=INSTALL_LIMIT_S)
    finally:
        try:
            os.rmdir(lock)
        except FileNotFoundError:
            pass


def dead_port():
    """A loopback port nobody listens on (bound, then let go)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def s3rver():
    node = shutil.which("node")
    if not node:
        pytest.fail("node not found: the s3 tests run s3rver on Node.js")
    npm_ci()
    data = tempfile.mkdtemp(prefix="decompd-s3rver-")
    log = open(os.path.join(data + ".log"), "w+")
    # s3rver makes ListObjectsV2 continuation tokens with DES, which
    # OpenSSL 3 keeps in its legacy provider: without it a truncated
    # listing answers 500 (ERR_OSSL_EVP_UNSUPPORTED).
    proc = subprocess.Popen(
        [node, "--openssl-legacy-provider", os.path.join(HERE, "node_modules", "s3rver", "bin",
                            "s3rver.js"),
         "--directory", data, "--address", "127.0.0.1", "--port", "0",
         "--silent", "--no-vhost-buckets", "--configure-bucket", BUCKET],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
        text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"S3rver listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        if port is None:
            log.seek(0)
            pytest.fail("s3rver did not start: " + log.read()[-2000:])
        yield {"endpoint": f"http://127.0.0.1:{port}", "dir": data}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
        os.unlink(data + ".log")


def test_every_c_case_is_a_meson_test():
    """meson.build lists the cases (one meson test each): none is left out
    and none is stale."""
    with open(os.path.join(HERE, "meson.build")) as f:
        listed = re.findall(r"^\s*'(\w+)',\s*$", f.read(), re.M)
    assert sorted(listed) == sorted(c_cases())


@pytest.mark.parametrize("case", c_cases())
def test_case(case, s3rver):
    binary = os.environ.get("S3_TEST_BIN")
    assert binary and os.path.exists(binary), \
        "S3_TEST_BIN must name the built test_s3 program"
    env = dict(os.environ)
    env.update({
        "CK_RUN_CASE": case,
        "S3_ENDPOINT": s3rver["endpoint"],
        "S3_BUCKET": BUCKET,
        "S3_DIR": s3rver["dir"],
        "S3_DEAD_ENDPOINT": f"http://127.0.0.1:{dead_port()}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    })
    r = subprocess.run([binary], env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # the case ran (a name CK_RUN_CASE does not know runs nothing)
    assert re.search(r"100%: Checks: 1, Failures: 0, Errors: 0", out), out
