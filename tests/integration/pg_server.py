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

    pg_server.py COMMAND ARGS...

starts the server, runs COMMAND with DECOMPD_TEST_INDEX set to the
server's URI (postgresql://decompd@127.0.0.1:PORT), stops the server and
exits with COMMAND's status. The integration harness (conftest.py) then
gives each daemon's data dir a database of its own on that server.
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
    if len(sys.argv) < 2:
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
    try:
        pg.start()
        env = dict(os.environ, DECOMPD_TEST_INDEX=pg.uri)
        child = subprocess.Popen(sys.argv[1:], env=env)
        status = child.wait()
        if status != 0:
            sys.stderr.write("---- PostgreSQL log (tail) ----\n" + pg.log()[-3000:])
    finally:
        pg.cleanup()
    sys.exit(status)


if __name__ == "__main__":
    main()
