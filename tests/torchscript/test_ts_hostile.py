"""TorchScript intake on archives that are broken or hostile: each read
fails with DECOMP_ERR_BAD_TORCHSCRIPT and a clear message, within its
limits; the calling process (tests/ts_dump) survives to report it, and the
private work folder is removed."""

import os
import zipfile
from typing import Tuple

import pytest
import torch
import torch.nn as nn

import tsutil
from hostile_models import Hog, Spin


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    good = d / "good.pt"
    torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3))).save(str(good))
    blob = good.read_bytes()
    out = {"good": good}
    out["truncated"] = d / "truncated.pt"
    out["truncated"].write_bytes(blob[: len(blob) // 2])
    # Garbage where the records are, the zip's directory left intact.
    bad = bytearray(blob)
    for i in range(64, len(bad) - 2048, 97):
        bad[i] ^= 0x5A
    out["scrambled"] = d / "scrambled.pt"
    out["scrambled"].write_bytes(bytes(bad))
    out["random"] = d / "random.pt"
    out["random"].write_bytes(os.urandom(4096))
    out["pth"] = d / "state_dict.pth"  # a torch.save zip, not TorchScript
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), str(out["pth"]))
    out["zip"] = d / "plain.zip"
    with zipfile.ZipFile(out["zip"], "w") as z:
        z.writestr("hello/data.txt", "not a model")
    out["spin"] = d / "spin.pt"
    torch.jit.script(Spin()).save(str(out["spin"]))
    out["hog"] = d / "hog.pt"
    torch.jit.script(Hog()).save(str(out["hog"]))
    return out


def read(archive, tmp_path, **kw):
    work = tmp_path / "tmp"
    work.mkdir(exist_ok=True)
    env = dict(kw.pop("env", {}), TMPDIR=str(work))
    r = tsutil.run_dump(archive, tmp_path / "out", env=env, **kw)
    assert os.listdir(work) == [], "work folder left behind"
    return r


def test_good_archive_reads(files, tmp_path):
    r = read(files["good"], tmp_path)
    assert r["ok"], r
    assert r["layers"] == 2 and r["tensors"] == 4


@pytest.mark.parametrize("kind", ["truncated", "scrambled", "random", "pth",
                                  "zip"])
def test_broken_archive_fails_to_load(files, tmp_path, kind):
    r = read(files[kind], tmp_path)
    assert not r["ok"]
    assert r["code"] == "bad_torchscript", r
    assert r["message"].startswith("TorchScript load failed: "), r
    assert len(r["message"]) > len("TorchScript load failed: ") + 5
    assert "\n" not in r["message"]


def test_not_torchscript_says_why(files, tmp_path):
    r = read(files["pth"], tmp_path)
    assert "constants.pkl" in r["message"] or "code/" in r["message"], r


# The time limit is a wall-clock deadline, and a busy machine runs the
# reader slower: a test about another limit (or a cancel) sets one far
# longer than its archive needs, so that only what it checks can stop the
# reader, and no test bounds how long a read takes.
FAR = 300


def test_archive_that_loops_at_load_is_stopped(files, tmp_path):
    r = read(files["spin"], tmp_path, time=3)
    assert not r["ok"]
    assert r["code"] == "bad_torchscript"
    assert r["message"] == "TorchScript reader exceeded its 3 s time limit"
    assert r["seconds"] >= 2.9, r  # not before its limit


def test_archive_that_allocates_without_bound_is_stopped(files, tmp_path):
    r = read(files["hog"], tmp_path, time=FAR, memory_mib=1536,
             timeout=2 * FAR)
    assert not r["ok"]
    assert r["code"] == "bad_torchscript"
    assert "exceeded its memory limit (1536 MiB)" in r["message"], r


def test_missing_reader_is_reported(files, tmp_path):
    r = read(files["good"], tmp_path,
             env={"DECOMPD_TS_READER": str(tmp_path / "no-such-reader")})
    assert not r["ok"]
    assert r["code"] == "torchscript_unsupported", r
    assert "no-such-reader" in r["message"]


def test_cancel_stops_the_reader(files, tmp_path):
    r = read(files["spin"], tmp_path, time=FAR, cancel_after=1,
             timeout=2 * FAR)
    assert not r["ok"]
    assert r["code"] == "cancelled", r  # before its time limit, then


def fake_reader(tmp_path, body):
    """A stand-in for decompd-ts-reader, to make the reader misbehave in
    ways no archive can make it."""
    path = tmp_path / "fake-reader"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return {"DECOMPD_TS_READER": str(path)}


def test_reader_crash_is_reported(files, tmp_path):
    r = read(files["good"], tmp_path,
             env=fake_reader(tmp_path, "echo 'about to crash' >&2\n"
                                       "kill -SEGV $$"))
    assert not r["ok"]
    assert r["code"] == "bad_torchscript", r
    assert r["message"].startswith("TorchScript reader crashed (signal 11"), r
    assert r["message"].endswith("about to crash"), r


def test_reader_flooding_stderr_still_meets_its_deadline(files, tmp_path):
    # The flood never ends: only the deadline can stop this reader, and a
    # supervisor kept busy reading it would never return.
    r = read(files["good"], tmp_path, time=2,
             env=fake_reader(tmp_path, "yes 'spam spam spam' >&2"))
    assert not r["ok"]
    assert r["message"] == "TorchScript reader exceeded its 2 s time limit"


def test_reader_output_is_checked(files, tmp_path):
    """A reader that claims success but wrote garbage: the engine's own
    safetensors checks reject it."""
    r = read(files["good"], tmp_path,
             env=fake_reader(tmp_path, 'printf garbage > "$2/weights.safetensors"'
                                       '; echo "{}" > "$2/spec.json"'))
    assert not r["ok"]
    assert r["code"] in ("bad_safetensors", "unknown_format"), r


class Writer(nn.Module):
    """Writes a file of its choosing at load time (torch.save is TorchScript)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.n = 1

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool, str]:
        return (self.n, self.training, self.target)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool, str]) -> None:
        self.n = state[0]
        self.training = state[1]
        self.target = state[2]
        torch.save(torch.zeros(3), self.target)

    def forward(self, x):
        return x


class Snoop(nn.Module):
    """Reads a file of its choosing into a buffer at load time
    (torch.from_file), which would come back to the uploader as a tensor."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.n = 1
        self.register_buffer("loot", torch.zeros(1, dtype=torch.uint8))

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool, str]:
        return (self.n, self.training, self.target)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool, str]) -> None:
        self.n = state[0]
        self.training = state[1]
        self.target = state[2]
        self.loot = torch.from_file(self.target, False, 4, dtype=torch.uint8)

    def forward(self, x):
        return x


def landlock_available(files, tmp_path):
    p = tsutil.run_reader(files["good"], tmp_path / "probe")
    assert p.returncode == 0, p.stderr
    return "Landlock is not available" not in p.stderr


def test_archive_cannot_write_files(files, tmp_path):
    if not landlock_available(files, tmp_path):
        pytest.skip("the kernel has no Landlock")
    target = tmp_path / "written-by-archive"
    archive = tmp_path / "writer.pt"
    torch.jit.script(Writer(str(target))).save(str(archive))
    assert not target.exists()  # saving does not run __setstate__
    read(archive, tmp_path)
    assert not target.exists()


def test_archive_cannot_read_files(files, tmp_path):
    if not landlock_available(files, tmp_path):
        pytest.skip("the kernel has no Landlock")
    secret = tmp_path / "secret"
    secret.write_bytes(b"hush")
    archive = tmp_path / "snoop.pt"
    torch.jit.script(Snoop(str(secret))).save(str(archive))
    r = read(archive, tmp_path)
    assert not r["ok"]
    assert r["code"] == "bad_torchscript", r
    assert "Permission denied" in r["message"], r
