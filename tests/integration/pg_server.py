#!/usr/bin/env python3
"""A real, throwaway PostgreSQL server for the tests (suite
'integration-pg').

Debian's binaries (/usr/lib/postgresql/15/bin, or $DECOMPD_PG_BIN): initdb
in a temporary folder, the server on a free loopback port with its socket
in that folder, trust authentication for the one user 'decompd', and no
fsync (a test server: its data dies with it). PostgreSQL refuses to run as
root, so as root (CI) the folder is given to an unprivileged user
('nobody') and the server runs as that user (runuser).

As a program it wraps a command:

    pg_server.py [--s3] COMMAND ARGS...

starts the server, runs COMMAND with DECOMPD_TEST_INDEX set to the
server's URI (postgresql://decompd@127.0.0.1:PORT), stops the server and
exits with COMMAND's status. The integration harness (conftest.py) then
gives each daemon's data dir a database of its own on that server. With
--s3 it also starts s3rver (tests/s3/s3rver.py) and sets
DECOMPD_TEST_BLOBS, DECOMPD_TEST_S3_ENDPOINT and DECOMPD_TEST_S3_KEYS: each
data dir's blobs then live in that bucket, under a prefix of its own.
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PG_BIN = os.environ.get("DECOMPD_PG_BIN", "/usr/lib/postgresql/15/bin")
USER = "decompd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self):
        self.dir = None
        self.port = None
        self.as_user = "nobody" if os.geteuid() == 0 else None

    @property
    def uri(self):
        return "postgresql://%s@127.0.0.1:%d" % (USER, self.port)

    def _run(self, args, **kw):
        if self.as_user:
            args = ["runuser", "-u", self.as_user, "--"] + args
        return subprocess.run(args, check=True, capture_output=True, text=True,
                              cwd=self.dir, **kw)

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="decompd-pg-")
        if self.as_user:
            import pwd
            pw = pwd.getpwnam(self.as_user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        data = os.path.join(self.dir, "data")
        self._run([os.path.join(PG_BIN, "initdb"), "-D", data, "-U", USER,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        for attempt in range(5):
            self.port = free_port()
            opts = ("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=300" % (self.port, self.dir))
            try:
                self.opts = opts
                self.resume()
                return self
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise RuntimeError("PostgreSQL did not start:\n" + self.log())
                time.sleep(0.2)
        return self

    def resume(self):
        """Start the server (again, after stop()) on its port."""
        self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", os.path.join(self.dir, "data"),
                   "-o", self.opts, "-l", os.path.join(self.dir, "server.log"), "-w",
                   "-t", "60", "start"])

    def log(self):
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, mode="fast"):
        if not self.dir:
            return
        try:
            self._run([os.path.join(PG_BIN, "pg_ctl"), "-D",
                       os.path.join(self.dir, "data"), "-m", mode, "-w", "stop"],
                      timeout=120)
        except subprocess.CalledProcessError:
            pass

    def cleanup(self):
        """Stop the server and remove its folder, whatever happens on the
        way (a signal meanwhile is ignored until it is done)."""
        old = [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)]
        try:
            try:
                self.stop()
            except Exception:
                self.stop("immediate")
        finally:
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
            for s, h in zip((signal.SIGTERM, signal.SIGINT), old):
                signal.signal(s, h)


# The bucket of --s3 runs: each data dir's blobs go under a
# prefix of its own (conftest.py).
S3_BUCKET = "decompd-parity"


def create_database(base_uri, name):
    """CREATE DATABASE `name` on the server of `base_uri` unless it exists."""
    from urllib.parse import urlsplit
    u = urlsplit(base_uri)
    r = subprocess.run([os.path.join(PG_BIN, "createdb"), "-h", u.hostname,
                        "-p", str(u.port or 5432), "-U", u.username or USER, name],
                       capture_output=True, text=True)
    if r.returncode != 0 and "already exists" not in r.stderr:
        raise RuntimeError("createdb %s: %s" % (name, r.stderr))


def main():
    args = sys.argv[1:]
    with_s3 = args[:1] == ["--s3"]
    if with_s3:
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    pg = PgServer()
    atexit.register(pg.cleanup)
    child = None

    def stop(signum, frame):  # meson's timeout: the server goes too
        if child and child.poll() is None:
            child.terminate()
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 1
    s3 = None
    try:
        pg.start()
        env = dict(os.environ, DECOMPD_TEST_INDEX=pg.uri)
        if with_s3:
            # blobs in an S3-compatible server too (tests/s3/s3rver.py)
            sys.path.insert(0, os.path.join(os.path.dirname(
                os.path.abspath(__file__)), "..", "s3"))
            import s3rver
            s3 = s3rver.S3rver([S3_BUCKET]).start()
            env.update(DECOMPD_TEST_BLOBS="s3://" + S3_BUCKET,
                       DECOMPD_TEST_S3_ENDPOINT=s3.endpoint,
                       DECOMPD_TEST_S3_KEYS=s3rver.ACCESS_KEY + ":" +
                       s3rver.SECRET_KEY)
        child = subprocess.Popen(args, env=env)
        status = child.wait()
        if status != 0:
            sys.stderr.write("---- PostgreSQL log (tail) ----\n" + pg.log()[-3000:])
    finally:
        if s3:
            s3.stop()
        pg.cleanup()
    sys.exit(status)


if __name__ == "__main__":
    main()
