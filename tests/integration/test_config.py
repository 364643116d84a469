"""Settings come from defaults < config file < DECOMPD_* environment <
flags; bad settings are refused with a message; logs are key=value lines
with time, level, topic and request id."""
import os
import re
import subprocess
import time

from conftest import BIN, Daemon, free_port


def test_precedence_file_env_flags(tmp_path):
    port = free_port()
    conf = tmp_path / "decompd.conf"
    conf.write_text("# example\n"
                    "data_dir = %s\n"
                    "listen = 127.0.0.1:%d\n"
                    "max_upload_bytes = 1M\n"
                    "log_level = debug\n" % (tmp_path / "from-file", port))
    d = Daemon(tmp_path / "unused", env={"DECOMPD_MAX_UPLOAD_BYTES": "1K"})
    d.args = []
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([BIN, "--config", str(conf), "--max-upload-bytes", "2K"],
                         stderr=log, env=d.env)
    try:
        d.port = port
        deadline = time.monotonic() + 300
        while True:  # until it listens
            try:
                if d.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                assert p.poll() is None, "decompd exited %s" % p.returncode
                assert time.monotonic() < deadline, "decompd did not start"
                time.sleep(0.05)
        assert os.path.isdir(tmp_path / "from-file" / "blobs")  # file's data_dir
        # flag (2K) beats env (1K) beats file (1M)
        assert d.request("POST", "/v1/models", body=b"x" * 1500)[0] == 422
        assert d.declare_upload(2049)[0] == 413
        status, hdrs, _ = d.request("GET", "/healthz", headers={"X-Request-Id": "abc-123"})
        assert hdrs["x-request-id"] == "abc-123"
    finally:
        p.terminate()
        p.wait(300)
    text = (tmp_path / "log").read_text()
    line = [l for l in text.splitlines() if "req=abc-123" in l][0]
    assert re.match(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info topic=http "
                    r"req=abc-123 event=request method=GET path=\"/healthz\" "
                    r"route=/healthz status=200 ", line), line
    assert p.returncode == 0


def test_bad_settings_are_refused(tmp_path):
    for args, env, msg in [
        (["--listen", "nowhere"], {}, "bad value for listen"),
        (["--workers", "-1"], {}, "bad value for workers"),
        ([], {"DECOMPD_MAX_UPLOAD_BYTES": "lots"}, "DECOMPD_MAX_UPLOAD_BYTES"),
        (["--config", str(tmp_path / "missing.conf")], {}, "missing.conf"),
        (["--log-level"], {}, "needs a value"),
        (["--torchscript-timeout", "0"], {}, "bad value for torchscript_timeout"),
        (["--torchscript-memory", "1K"], {}, "bad value for torchscript_memory"),
        ([], {"DECOMPD_TORCHSCRIPT_TIMEOUT": "soon"}, "DECOMPD_TORCHSCRIPT_TIMEOUT"),
    ]:
        r = subprocess.run([BIN, "--data-dir", str(tmp_path / "v")] + args,
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, **env))
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    bad = tmp_path / "bad.conf"
    bad.write_text("colour = blue\n")
    r = subprocess.run([BIN, "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "bad.conf:1: unknown setting 'colour'" in r.stderr


def test_torchscript_settings(daemon_factory):
    """torchscript_timeout (120 s) and torchscript_memory (0: the reader's
    default) from the environment and flags; logged at start."""
    d = daemon_factory(args=["--torchscript-memory", "2G"],
                       env={"DECOMPD_TORCHSCRIPT_TIMEOUT": "7"}).start()
    line = [l for l in d.log().splitlines() if "event=torchscript " in l][0]
    if os.environ.get("DECOMPD_TS_ENABLED") == "1":
        assert "supported=yes" in line and "available=yes" in line, line
        assert "timeout=7 memory=2147483648" in line, line
    else:
        assert "supported=no" in line, line
    d.stop()
    d = daemon_factory(name="defaults").start()
    line = [l for l in d.log().splitlines() if "event=torchscript " in l][0]
    if os.environ.get("DECOMPD_TS_ENABLED") == "1":
        assert "timeout=120 memory=0" in line, line


def test_every_setting_in_the_deploy_examples_is_one_decompd_knows(tmp_path):
    """deploy/'s example configs (set and commented-out `key = value`
    lines alike) name only keys `decompd --help` lists, and the values set
    in them are accepted (checked by loading each file, its PostgreSQL and
    S3 settings aside: those need the servers)."""
    from conftest import SOURCE_DIR
    helps = subprocess.run([BIN, "--help"], capture_output=True, text=True,
                           timeout=60).stdout
    known = set(re.findall(r"^  --([a-z0-9-]+)", helps, re.M))
    examples = [os.path.join(SOURCE_DIR, "deploy", "decompd.conf.example"),
                os.path.join(SOURCE_DIR, "deploy", "cluster",
                             "node.conf.example")]
    for path in examples:
        lines = []
        with open(path) as f:
            for line in f:
                m = re.match(r"^#?([a-z_0-9]+) = (.*)$", line.strip())
                if not m:
                    continue
                assert m.group(1).replace("_", "-") in known, (path, line)
                if not line.startswith("#") and m.group(1) not in (
                        "index", "blobs", "s3_endpoint", "s3_region",
                        "data_dir", "listen"):
                    lines.append(line)
        assert lines, path
        conf = tmp_path / "only-local.conf"
        conf.write_text("".join(lines))
        r = subprocess.run([BIN, "check", "--config", str(conf)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "settings ok" in r.stdout, (path, r.stderr)
    # and `decompd check` does refuse what serving would refuse
    conf.write_text("workers = -5\n")
    r = subprocess.run([BIN, "check", "--config", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bad value for workers" in r.stderr
