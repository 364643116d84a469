"""decompd.client — the decompd service from a training script.

    from decompd.client import Client

    c = Client()                        # DECOMPD_URL, DECOMPD_TOKEN
    job = c.submit(model)               # a live nn.Module: its state dict + spec
    c.wait(job)                         # progress on stderr
    model, changes = c.pull(model, job) # fetch + decompose_network + load

    # keep the layers' outputs on data: a decompd.calibration file (a path
    # or its bytes) is attached to the model and the job runs with it
    job = c.submit("w.pth", spec, {"name": "budget",
                                   "types": ["Conv2d", "Linear"]},
                   calibration="cal.safetensors")

    # aim at a latency measured on the target device: a decompd.profile
    # document (a path, JSON text, a dict, or a Profile) is attached to the
    # model and the job runs with it
    job = c.submit(model, policy={"name": "budget", "latency_reduction": 1.3},
                   profile=decompd.profile(model, example_input))

or, with the AMCT-style API, ``auto_decomposition(model, server=URL)`` (or
DECOMPD_URL set), which does the same and gives exactly what the in-process
engine gives.

This file owns the Python side of the service: REST calls (stdlib
http.client, no dependency), the streamed upload, following jobs live (their
event stream; polling with backoff where there is none), and
fetching — several artifacts at once, a thread and a connection each — into
the local content-addressed cache it shares with the C client
(libdecompclient; layout in include/decomp/client.h), and pulling a job's
weights into a module (a sharded output is read from its shards in place
in the cache by decompd.safetensors_io):

    CACHE/blobs/sha256/<hex[0:2]>/<hex>   verified files, named by SHA-256
    CACHE/tmp/<hex>.<unique>.part         partial downloads (claimed by
                                          rename, resumed with Range)
    CACHE/jobs/<job-id>.json              {"format": "decompd.cache.job",
                                          "version": 1, "server", "job",
                                          "artifacts": {name: {digest, size,
                                          media_type}}}

CACHE is DECOMPD_CACHE, else $XDG_CACHE_HOME/decompd, else
~/.cache/decompd. Every blob is verified (SHA-256) when it is downloaded and
every time it is served from the cache; a corrupt one is fetched again.
DECOMPD_OFFLINE=1 serves jobs fetched before from the cache without any
connection.

Errors are ClientError subclasses (decompd.DecompError, with the code from
include/decomp/errors.h) that are also the matching built-in: ConnectError
(ConnectionError), AuthError (PermissionError), NotFoundError (LookupError),
DigestMismatchError, DiskFullError (OSError, errno ENOSPC),
OfflineMissError (LookupError), JobFailedError, WaitTimeoutError
(TimeoutError), ServiceValueError (ValueError: the server refused the input).
"""

import errno
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from . import _c_constants as _C
from .errors import DecompError, SafetensorsError

__all__ = [
    "Client", "Job", "ClientError", "ConnectError", "TransferError",
    "AuthError", "NotFoundError", "ConflictError", "DigestMismatchError",
    "DiskFullError", "OfflineMissError", "JobFailedError",
    "WaitTimeoutError", "ServiceValueError", "ServerError",
    "default_cache_dir", "blob_path", "job_record_path",
]

# From include/decomp/client.h and decomp.h (through _c_constants).
DEFAULT_URL = _C.CLIENT_DEFAULT_URL
ARTIFACT_WEIGHTS = _C.ARTIFACT_WEIGHTS_PTH
ARTIFACT_SAFETENSORS = _C.ARTIFACT_WEIGHTS_SAFETENSORS
ARTIFACT_INFO = _C.ARTIFACT_INFO
# A sharded output: this index and the shards its weight_map names.
ARTIFACT_INDEX = _C.ARTIFACT_INDEX
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 32
_CHUNK = 1 << 20
# A download is read, hashed and written in pieces of this size; an
# interrupted fetch stops at the next piece.
_PIECE = 1 << 18


# ---------------------------------------------------------------------------
# Errors (codes from include/decomp/errors.h)


class ClientError(DecompError):
    """A failure talking to the decompd service or using its cache."""


class ConnectError(ClientError, ConnectionError):
    """The server could not be reached (connect_failed)."""


class TransferError(ClientError, ConnectionError):
    """The connection broke during a transfer (transfer_interrupted); a
    fetch keeps its partial file and the next one resumes it."""


class AuthError(ClientError, PermissionError):
    """401 (unauthorized: no or unknown token) or 403 (forbidden: the
    token's role is too low)."""


class NotFoundError(ClientError, LookupError):
    """404: no such model, job or artifact."""


class ConflictError(ClientError, RuntimeError):
    """409: the resource is not in a state that allows this."""


class DigestMismatchError(ClientError, ValueError):
    """Downloaded (or cached) bytes failed their SHA-256."""


class DiskFullError(ClientError, OSError):
    """No space left writing the cache or the destination."""

    def __init__(self, code, code_name, detail):
        super().__init__(code, code_name, detail)
        self.errno = errno.ENOSPC
        self.strerror = detail


class OfflineMissError(ClientError, LookupError):
    """Offline mode (DECOMPD_OFFLINE) and the cache lacks it."""


class JobFailedError(ClientError, RuntimeError):
    """The job failed or was cancelled; ``.job`` holds it."""

    def __init__(self, code, code_name, detail, job=None):
        super().__init__(code, code_name, detail)
        self.job = job


class WaitTimeoutError(ClientError, TimeoutError):
    """wait() ran out of time; ``.job`` holds the last state seen."""

    def __init__(self, code, code_name, detail, job=None):
        super().__init__(code, code_name, detail)
        self.job = job


class ServiceValueError(ClientError, ValueError):
    """The server refused the input (bad_spec, bad_policy, unknown_format,
    spec_mismatch, forbidden_global, payload_too_large…)."""


class ServerError(ClientError, RuntimeError):
    """Any other error answer."""


# Every code of include/decomp/errors.h (as decomp_error_from_code); a name
# the table lacks counts as server_error.
_CODES = _C.ERROR_NUMBERS


def _err(cls, code_name, detail, **kw):
    return cls(_CODES.get(code_name, _C.ERR_SERVER), code_name, detail, **kw)


# ---------------------------------------------------------------------------
# The cache layout (same as include/decomp/client.h)


def default_cache_dir():
    """DECOMPD_CACHE, else $XDG_CACHE_HOME/decompd, else ~/.cache/decompd."""
    v = os.environ.get("DECOMPD_CACHE")
    if v:
        return v.rstrip("/") or "/"
    v = os.environ.get("XDG_CACHE_HOME")
    if v and v.startswith("/"):
        return os.path.join(v, "decompd")
    return os.path.join(os.path.expanduser("~"), ".cache", "decompd")


def _hex(digest):
    h = digest[7:] if digest.startswith("sha256:") else digest
    if len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return h


def blob_path(cache, digest):
    """CACHE/blobs/sha256/<hex[0:2]>/<hex>."""
    h = _hex(digest)
    return os.path.join(cache, "blobs", "sha256", h[:2], h)


def job_record_path(cache, job_id):
    """CACHE/jobs/<job-id>.json."""
    if not job_id or len(job_id) > 64 or not all(
            ch.isascii() and (ch.isalnum() or ch in "_-") for ch in job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return os.path.join(cache, "jobs", job_id + ".json")


def _unique():
    return f"{os.getpid()}-{time.time_ns():x}-{os.urandom(4).hex()}"


def _disk_error(e, what):
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return _err(DiskFullError, "disk_full",
                    f"{what}: no space left on device")
    return e


def _sha256_file(path, limit=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = limit
        while left is None or left > 0:
            b = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h


def _claim_partial(tmp_dir, hexd):
    """(path, have): the largest partial of <hexd> renamed to a name of our
    own, or a new empty one (as client_partial_claim in cache.c)."""
    mine = os.path.join(tmp_dir, f"{hexd}.{_unique()}.part")
    for _ in range(4):
        best, size = None, -1
        try:
            names = os.listdir(tmp_dir)
        except FileNotFoundError:
            break
        for n in names:
            if n.startswith(hexd + ".") and n.endswith(".part"):
                try:
                    st = os.stat(os.path.join(tmp_dir, n))
                except OSError:
                    continue
                if st.st_size > size:
                    best, size = n, st.st_size
        if best is None:
            break
        try:
            os.rename(os.path.join(tmp_dir, best), mine)
            return mine, os.path.getsize(mine)
        except FileNotFoundError:
            continue  # another fetch took it
    fd = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    return mine, 0


def _write_atomic(path, data):
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{_unique()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _disk_error(e, path) from None


def _copy_atomic(src, dst):
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.{_unique()}.tmp")
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo, _CHUNK)
            fo.flush()
            os.fsync(fo.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _disk_error(e, dst) from None


def artifact_name_problem(name):
    """Why `name` cannot be an artifact's name — a plain file name in DEST
    (the C client's rule, client_artifact_name_ok) — or None."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) >= 64:
        return "is too long"
    if name.startswith("."):
        return "starts with '.'"
    if "/" in name or "\\" in name:
        return "is a path, not a plain file name"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "holds a control character"
    return None


class _Stopped(Exception):
    """A transfer told to stop (the caller interrupted the fetch); its
    partial file is kept."""


class _FetchProgress:
    """Progress of a fetch's transfers, from any thread, as one line: the
    files and bytes of the whole fetch, and the artifact that moved last."""

    def __init__(self, bar, sizes):
        self.bar = bar
        self.sizes = sizes  # name -> size of every artifact fetched
        self.done = dict.fromkeys(sizes, 0)
        self.files = 0
        self.lock = threading.Lock()
        self.last = 0.0

    def update(self, name, done, final=False, cached=False):
        """`done` bytes of `name` are in; `final`: it is verified;
        `cached`: it was in the cache already (nothing to show)."""
        with self.lock:
            self.done[name] = done
            if cached:
                self.files += 1
                return
            now = time.monotonic()
            if not final and now - self.last < 0.2:
                return
            self.last = now
            if final:
                self.files += 1
            total = sum(self.sizes.values())
            got = sum(self.done.values())
            size = self.sizes[name]
            if len(self.sizes) > 1:
                text = (f"fetch {self.files}/{len(self.sizes)} files "
                        f"{got}/{total} bytes ({name})")
            else:
                text = f"fetch {name} {done}/{size} bytes"
            if not self.bar.tty and not final:
                return  # a line per file on a pipe
            self.bar.show(text if self.bar.tty else
                          f"fetched {name}: {size} bytes",
                          got / total if total else 1.0)


def _parse_content_range(h):
    """(a, b, total) of "bytes a-b/total" (total -1 for "*"), or None."""
    if not h or not h.lower().startswith("bytes"):
        return None
    try:
        rng, total = h[5:].strip().split("/")
        a, b = (int(x) for x in rng.split("-"))
        total = -1 if total.strip() == "*" else int(total)
    except ValueError:
        return None
    if b < a or (total >= 0 and b >= total):
        return None
    return a, b, total


# ---------------------------------------------------------------------------
# Jobs


class Job:
    """A job as the server (or the cache's record) last described it."""

    def __init__(self, doc):
        self.doc = doc
        self.id = doc["id"]
        self.model = doc.get("model")
        self.state = doc.get("state")
        p = doc.get("progress") or {}
        self.layers_done = p.get("layers_done", 0)
        self.layers_total = p.get("layers_total", 0)
        # While running: {"layer", "step", "fraction"} inside the current
        # layer (the engine's progress reports); None otherwise.
        self.current = p.get("current")
        self.error = doc.get("error")
        # The digest of the calibration the job runs with, or None.
        self.calibration = doc.get("calibration")
        # The digest of the latency profile the job runs with, or None.
        self.profile = doc.get("profile")
        self.artifacts = {a["name"]: a for a in doc.get("artifacts") or []}

    @property
    def finished(self):
        return self.state in ("succeeded", "failed", "cancelled")

    def __repr__(self):
        return (f"Job({self.id}, {self.state}, {self.layers_done}/"
                f"{self.layers_total} layers)")


def _job_id(job):
    return job.id if isinstance(job, Job) else str(job)


class _Progress:
    """A one-line bar on a terminal, a line per change otherwise."""

    def __init__(self, enabled, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.last = None
        self.drawn = False

    def show(self, text, frac=None):
        if not self.enabled:
            return
        if self.tty:
            n = int(max(0.0, min(1.0, frac or 0.0)) * 24)
            self.stream.write("\r[" + "#" * n + "." * (24 - n) + "] " +
                              text[:60].ljust(60))
            self.stream.flush()
            self.drawn = True
        elif text != self.last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last = text

    def end(self):
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


# ---------------------------------------------------------------------------
# The client


class Client:
    """A decompd service client.

    url: the server (default DECOMPD_URL, else http://127.0.0.1:8080);
    token: the bearer token (default DECOMPD_TOKEN); cache: the cache folder
    (default above); offline: serve from the cache only (default
    DECOMPD_OFFLINE); timeout: seconds for connecting and for each read.
    """

    def __init__(self, url=None, token=None, *, cache=None, offline=None,
                 timeout=60.0):
        url = url or os.environ.get("DECOMPD_URL") or DEFAULT_URL
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"server URL {url!r} must be http:// or "
                             f"https://HOST[:PORT]")
        self.url = url.rstrip("/")
        self._scheme, self._host = u.scheme, u.hostname
        self._port = u.port
        self._prefix = u.path.rstrip("/")
        self.token = token if token is not None else os.environ.get(
            "DECOMPD_TOKEN") or None
        self.cache = cache or default_cache_dir()
        if offline is None:
            offline = os.environ.get("DECOMPD_OFFLINE", "").lower() in (
                "1", "true", "yes", "on")
        self.offline = offline
        self.timeout = timeout

    def __repr__(self):
        return f"Client({self.url!r}, cache={self.cache!r}" + (
            ", offline)" if self.offline else ")")

    # -- HTTP ---------------------------------------------------------------

    def _conn(self):
        cls = (http.client.HTTPSConnection if self._scheme == "https"
               else http.client.HTTPConnection)
        return cls(self._host, self._port, timeout=self.timeout,
                   blocksize=_CHUNK)

    def _no_offline(self, what):
        if self.offline:
            raise _err(OfflineMissError, "offline_miss",
                       f"{what}: offline mode (DECOMPD_OFFLINE) makes no "
                       f"requests")

    def _open(self, method, path, body=None, headers=None):
        """(connection, response) with the headers read; the caller reads
        the body and closes the connection."""
        h = {"Accept": "application/json, */*",
             "User-Agent": "decompd-python-client/0.1.0"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        h.update(headers or {})
        conn = self._conn()
        try:
            conn.request(method, self._prefix + path, body=body, headers=h)
        except (ConnectionRefusedError, socket.gaierror,
                socket.timeout) as e:
            conn.close()
            raise _err(ConnectError, "connect_failed",
                       f"cannot connect to {self.url}: {e} (is decompd "
                       f"running? set DECOMPD_URL)") from None
        except (ConnectionError, OSError) as e:
            conn.close()
            if isinstance(e, (BrokenPipeError, ConnectionResetError)):
                # The server may have answered early (401, 413): read it.
                try:
                    return conn, conn.getresponse()
                except (http.client.HTTPException, OSError):
                    pass
            raise _err(ConnectError, "connect_failed",
                       f"{method} {self.url}{path}: {e}") from None
        try:
            return conn, conn.getresponse()
        except (http.client.HTTPException, OSError) as e:
            conn.close()
            raise _err(TransferError, "transfer_interrupted",
                       f"{method} {self.url}{path}: no answer: {e}") from None

    def _error(self, method, path, status, body):
        name, detail = None, None
        try:
            doc = json.loads(body)
            name, detail = doc.get("code"), doc.get("detail")
        except (ValueError, AttributeError):
            pass
        hint = ""
        if status == 401:
            cls, default = AuthError, "unauthorized"
            hint = (" (the token in DECOMPD_TOKEN was not accepted)"
                    if self.token else " (set DECOMPD_TOKEN)")
        elif status == 403:
            cls, default = AuthError, "forbidden"
            hint = " (the token's role does not allow this)"
        elif status == 404:
            cls, default = NotFoundError, "not_found"
        elif status == 409:
            cls, default = ConflictError, "conflict"
        elif 400 <= status < 500:
            cls, default = ServiceValueError, "bad_request"
        else:
            cls, default = ServerError, "server_error"
        name = name or default
        code = _CODES.get(name, _C.ERR_SERVER)
        return cls(code, name, f"{method} {path}: {status} {name}: "
                   f"{detail or 'the server answered with an error'}{hint}")

    def _json(self, method, path, doc=None):
        self._no_offline(f"{method} {path}")
        body = headers = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers = {"Content-Type": "application/json"}
        conn, r = self._open(method, path, body, headers)
        try:
            data = r.read()
        except (http.client.HTTPException, OSError) as e:
            raise _err(TransferError, "transfer_interrupted",
                       f"{method} {path}: {e}") from None
        finally:
            conn.close()
        if r.status // 100 != 2:
            raise self._error(method, path, r.status, data)
        return r.status, (json.loads(data) if data else None)

    # -- models and jobs ----------------------------------------------------

    def _stream(self, what, method, rpath, source, progress,
                content_type="application/octet-stream", start=0,
                headers=None):
        """Send `source` (a file path, streamed, or bytes) from byte
        `start` as the raw body of `method` `rpath`; (status, response,
        body bytes, label of the source)."""
        self._no_offline(f"{what} {rpath}")
        bar = _Progress(progress)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            label, size, f = f"{len(data)} bytes", len(data), io.BytesIO(data)
        else:
            label = os.fspath(source)
            size = os.path.getsize(label)
            f = open(label, "rb")
        fname = os.path.basename(label)

        class Reader(io.RawIOBase):
            def __init__(self, f):
                self.f, self.done = f, start

            def readable(self):
                return True

            def read(self, n=-1):
                b = self.f.read(n)
                self.done += len(b)
                bar.show(f"{what} {fname} {self.done}/{size} bytes",
                         self.done / size if size else 1)
                return b

        with f:
            f.seek(start)
            h = {"Content-Type": content_type,
                 "Content-Length": str(size - start)}
            h.update(headers or {})
            conn, r = self._open(method, rpath, Reader(f), h)
            try:
                data = r.read()
            finally:
                conn.close()
                bar.end()
        return r.status, r, data, label

    def _send(self, what, method, rpath, source, progress,
              content_type="application/octet-stream"):
        """Send `source` (a file path, streamed, or bytes) as the raw body
        of `method` `rpath`; the answer's JSON. Errors name `what`."""
        status, _, data, label = self._stream(what, method, rpath, source,
                                              progress, content_type)
        if status not in (200, 201):
            raise self._named_error(method, rpath, status, data,
                                    f"{what} {label}")
        return json.loads(data)

    def _named_error(self, method, rpath, status, data, prefix):
        e = self._error(method, rpath.split("?")[0], status, data)
        e.detail = f"{prefix}: {e.detail}"
        e.args = (f"{e.detail} [{e.code_name}]",)
        return e

    def upload(self, path, name=None, progress=False):
        """Upload a weight file (streamed), or a sharded safetensors
        checkpoint — its folder (holding model.safetensors.index.json) or
        that index — as `decompctl upload DIR` does: each shard as a
        content-addressed blob (skipped when the server has it, resumed
        from what the server holds of a partial upload), then the index,
        which binds them into one model. The server's model dict. A bad
        index (a shard name that is a path, a missing shard file) is a
        SafetensorsError before anything is sent."""
        p = os.fspath(path)
        q = "?name=" + urllib.parse.quote(name) if name else ""
        if os.path.isdir(p) or p.endswith(".json"):
            return self._upload_sharded(p, q, progress)
        return self._send("upload", "POST", "/v1/models" + q, p, progress)

    def _upload_sharded(self, path, query, progress):
        from .safetensors_io import INDEX_NAME, read_index
        ipath = os.path.join(path, INDEX_NAME) if os.path.isdir(path) \
            else path
        wmap, _ = read_index(ipath)
        with open(ipath, "rb") as f:
            index = json.load(f)
        folder = os.path.dirname(os.path.abspath(ipath))
        shards = list(OrderedDict.fromkeys(wmap.values()))
        for shard in shards:
            if not os.path.isfile(os.path.join(folder, shard)):
                raise SafetensorsError(f"{ipath}: index: shard {shard!r} is "
                                       f"not a file in {folder}")
        digests = OrderedDict(
            (shard, self._upload_blob(os.path.join(folder, shard), progress))
            for shard in shards)
        return self._json("POST", "/v1/models" + query,
                          {"index": index, "shards": digests})[1]

    def _upload_blob(self, path, progress):
        """PUT the file at `path` as the blob of its SHA-256 unless the
        server has it, from where a partial upload the server holds ends;
        its "sha256:…" digest."""
        h, size = hashlib.sha256(), os.path.getsize(path)
        with open(path, "rb") as f:
            for piece in iter(lambda: f.read(_CHUNK), b""):
                h.update(piece)
        digest = "sha256:" + h.hexdigest()
        rpath = "/v1/blobs/" + digest
        self._no_offline(f"HEAD {rpath}")
        conn, r = self._open("HEAD", rpath)
        try:
            r.read()
        finally:
            conn.close()
        if r.status == 200:
            return digest
        if r.status != 404:
            raise self._named_error("HEAD", rpath, r.status, b"",
                                    f"shard {path}")

        def offset(resp):
            v = resp.getheader("Upload-Offset") or ""
            return int(v) if v.isdigit() and int(v) < size else 0

        start = offset(r)
        for _ in range(3):
            extra = {"Content-Range": f"bytes {start}-{size - 1}/{size}"} \
                if start else None
            status, resp, data, _ = self._stream(
                "upload", "PUT", rpath, path, progress, start=start,
                headers=extra)
            if status in (200, 201):
                return digest
            if status == 409 and resp.getheader("Upload-Offset"):
                start = offset(resp)  # another upload moved it
                continue
            if status == 422 and start:
                start = 0  # what the server held was not this file's start
                continue
            break
        raise self._named_error("PUT", rpath, status, data, f"shard {path}")

    def model(self, model_id):
        """The server's model dict (with has_spec, calibration and
        profile)."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        return self._json("GET", f"/v1/models/{urllib.parse.quote(mid)}")[1]

    def attach_spec(self, model_id, spec):
        """Attach a layer spec (a dict or JSON text) to a model, replacing
        any: jobs on it may omit theirs, and a calibration is checked
        against it. The canonical spec as stored."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        doc = json.loads(spec) if isinstance(spec, (str, bytes)) else spec
        return self._json("PUT", f"/v1/models/{urllib.parse.quote(mid)}/spec",
                          doc)[1]

    def attach_calibration(self, model_id, calibration, progress=False):
        """Attach a calibration — a decompd.calibration safetensors file
        (a path, streamed, or its bytes: the Gram matrices of layers'
        inputs) — to a model, replacing any; {"digest", "layers", "size",
        "url"}. The server checks it against the model's layer spec first
        (ServiceValueError bad_calibration naming the layer; ConflictError
        when the model has no spec yet: attach_spec first)."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        return self._send("calibration", "PUT",
                          f"/v1/models/{urllib.parse.quote(mid)}/calibration",
                          calibration, progress)

    def detach_calibration(self, model_id):
        """Detach a model's calibration (jobs submitted with it keep it)."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        self._json("DELETE",
                   f"/v1/models/{urllib.parse.quote(mid)}/calibration")

    def attach_profile(self, model_id, profile, progress=False):
        """Attach a latency profile — a decompd.profile JSON document, as a
        file path, JSON text (a str starting with "{", or bytes), a dict,
        or any object with a ``to_json()`` method (decompd.profile's
        Profile) — to a model, replacing any; {"digest", "layers", "size",
        "url"} (the digest is the SHA-256 of the bytes sent: a file's
        own). The server checks it against the model's layer spec first
        (ServiceValueError bad_profile naming the layer; ConflictError when
        the model has no spec yet: attach_spec first)."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        return self._send("profile", "PUT",
                          f"/v1/models/{urllib.parse.quote(mid)}/profile",
                          _profile_body(profile), progress,
                          content_type="application/json")

    # The route's own verb (PUT /v1/models/{id}/profile).
    put_profile = attach_profile

    def get_profile(self, model_id):
        """The model's attached latency profile, as the dict it was
        attached as (NotFoundError when it has none)."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        return self._json("GET",
                          f"/v1/models/{urllib.parse.quote(mid)}/profile")[1]

    def detach_profile(self, model_id):
        """Detach a model's latency profile (jobs submitted with it keep
        it)."""
        mid = model_id["id"] if isinstance(model_id, dict) else str(model_id)
        self._json("DELETE", f"/v1/models/{urllib.parse.quote(mid)}/profile")

    def job(self, job):
        """The job (a Job) from the server, or offline from the cache."""
        jid = _job_id(job)
        if self.offline:
            return Job(self._record(jid)["job"])
        return Job(self._json("GET", f"/v1/jobs/{urllib.parse.quote(jid)}")[1])

    def jobs(self, state=None, limit=None, cursor=None):
        """(list of Job, next_cursor) — one page, newest first."""
        q = {k: v for k, v in (("state", state), ("limit", limit),
                               ("cursor", cursor)) if v is not None}
        path = "/v1/jobs" + ("?" + urllib.parse.urlencode(q) if q else "")
        doc = self._json("GET", path)[1]
        return [Job(j) for j in doc["jobs"]], doc.get("next_cursor")

    def cancel(self, job):
        """Cancel a job; the Job as the server answered."""
        jid = _job_id(job)
        return Job(self._json("POST", f"/v1/jobs/{jid}/cancel")[1])

    def retry(self, job):
        """Run a failed or cancelled job again: it goes back to the
        server's queue as a new attempt (``wait`` follows it). Submitting
        the same input again would only return the failed job (submits are
        idempotent by content). A queued or running job is left as it is; a
        succeeded one raises ConflictError. The Job as the server
        answered."""
        jid = _job_id(job)
        return Job(self._json("POST",
                              f"/v1/jobs/{urllib.parse.quote(jid)}/retry")[1])

    def submit(self, model_or_path, spec=None, policy=None, *, name=None,
               example_input=None, progress=False, calibration=None,
               profile=None):
        """Submit a decomposition job; a Job.

        model_or_path: a live nn.Module (its state dict is uploaded and its
        layer spec made from it, as the in-process engine gets them), a
        weight file path (.pth or safetensors, or a sharded safetensors
        checkpoint's folder or index, uploaded shard by shard as `upload`
        does: give `spec`, a dict or JSON text, unless the server has one
        for the model), or a TorchScript
        file (the server reads it where it can; else it is loaded here and
        its weights and spec are sent). policy: a name, a dict or JSON text
        (default: the server's, budget; Linear layers are decomposed when
        its "types" has them). example_input: with a module, one forward
        pass records each conv's input size for the spec.

        calibration: keep the layers' outputs on data — a decompd.calibration
        safetensors file (a path or its bytes) is attached to the model
        (with the job's spec, which the server checks it against) and the
        job runs with it (whitened channel_svd / svd; the info file records
        each layer's output_relative_error); True: the calibration attached
        to the model; "sha256:…": that one. It is part of the job's
        identity: the same input with another calibration, or none, is
        another job.

        profile: a latency profile measured on the device the model will
        run on (decompd.profile) — a file path, JSON text, a dict or an
        object with ``to_json()`` (a Profile) — is attached to the model
        (after the job's spec and the calibration) and the job runs with
        it: the budget may then take "latency_reduction", every policy
        leaves alone a layer it says would get slower, and the info file
        records each layer's predicted latency_before/latency_after and the
        whole model's in its summary; True: the profile attached to the
        model; "sha256:…": that one. Part of the job's identity too.
        """
        spec_doc = None
        if spec is not None:
            spec_doc = json.loads(spec) if isinstance(spec, (str, bytes)) \
                else spec
        if isinstance(policy, (bytes, str)) and str(policy).lstrip().startswith("{"):
            policy = json.loads(policy)
        cal = {"calibration": calibration, "profile": profile,
               "progress": progress}
        if hasattr(model_or_path, "state_dict") and callable(
                getattr(model_or_path, "named_modules", None)):
            return self._submit_module(model_or_path, policy, name,
                                       example_input, progress, cal)
        path = os.fspath(model_or_path)
        if spec_doc is None and _is_torchscript(path):
            try:
                model = self.upload(path, name=name, progress=progress)
            except ServiceValueError as e:
                if e.code_name not in ("torchscript_unsupported",
                                       "bad_torchscript", "unknown_format"):
                    raise
                import torch
                m = torch.jit.load(path, map_location="cpu")
                return self._submit_script(m, policy, name or
                                           os.path.basename(path), progress,
                                           cal)
            try:
                return self._submit_id(model["id"], None, policy, cal)
            except ServiceValueError as e:
                if e.code_name != "bad_spec":
                    raise
                # The server keeps the archive but has no spec for it: send
                # the weights and the spec read here.
                import torch
                m = torch.jit.load(path, map_location="cpu")
                return self._submit_script(m, policy, name or
                                           os.path.basename(path), progress,
                                           cal)
        model = self.upload(path, name=name, progress=progress)
        return self._submit_id(model["id"], spec_doc, policy, cal)

    def _submit_id(self, model_id, spec_doc, policy, cal=None):
        """POST the job; `cal` holds its "calibration" and "profile" (each
        None/False, True, a digest, or something to attach) and
        "progress"."""
        cal = cal or {}
        req = {"model": model_id}
        if spec_doc is not None:
            req["spec"] = spec_doc
        if policy is not None:
            req["policy"] = policy
        progress = cal.get("progress", False)
        spec_attached = False
        for field, attach in (("calibration", self.attach_calibration),
                              ("profile", self.attach_profile)):
            v = cal.get(field)
            if v is None or v is False:
                continue
            if v is True or (isinstance(v, str) and v.startswith("sha256:")):
                req[field] = v
                continue
            # A file (or its contents): attached first (with the job's spec:
            # the server checks it against the model's), then named by its
            # digest, so that one attached meanwhile by someone else is
            # never used in its place (a 409 instead).
            if spec_doc is not None and not spec_attached:
                self.attach_spec(model_id, spec_doc)
                spec_attached = True
            req[field] = attach(model_id, v, progress)["digest"]
        return Job(self._json("POST", "/v1/jobs", req)[1])

    def _submit_module(self, model, policy, name, example_input, progress,
                       cal=None):
        spec_doc, tensors = module_payload(model, example_input)
        import torch
        fd, tmp = tempfile.mkstemp(prefix="decompd-upload.", suffix=".pth")
        os.close(fd)
        try:
            torch.save(tensors, tmp)
            m = self.upload(tmp, name=name or type(model).__name__,
                            progress=progress)
        finally:
            os.unlink(tmp)
        return self._submit_id(m["id"], spec_doc, policy, cal)

    def _submit_script(self, m, policy, name, progress, cal=None):
        """A TorchScript module the server cannot read: its Conv2d
        submodules (original_name "Conv2d") make the spec here."""
        import torch
        layers = []
        for n, mod in m.named_modules():
            if not n or getattr(mod, "original_name", None) != "Conv2d":
                continue
            pad = mod.padding
            layers.append({
                "name": n, "type": "Conv2d",
                "in_channels": int(mod.in_channels),
                "out_channels": int(mod.out_channels),
                "kernel_size": list(mod.kernel_size),
                "stride": list(mod.stride),
                "padding": pad if isinstance(pad, str) else list(pad),
                "dilation": list(mod.dilation), "groups": int(mod.groups),
                "bias": getattr(mod, "bias", None) is not None,
                "padding_mode": mod.padding_mode})
        fd, tmp = tempfile.mkstemp(prefix="decompd-upload.", suffix=".pth")
        os.close(fd)
        try:
            torch.save({k: v.detach() for k, v in m.state_dict().items()}, tmp)
            model = self.upload(tmp, name=name, progress=progress)
        finally:
            os.unlink(tmp)
        return self._submit_id(model["id"], {"layers": layers}, policy, cal)

    def _events(self, jid, deadline):
        """The job's live events (GET /v1/jobs/{id}/events): a Job per
        change until the final one. StopIteration early when the stream
        ends without one; errors as _open's, NotFoundError for a server
        without the route (or no such job)."""
        path = f"/v1/jobs/{urllib.parse.quote(jid)}/events"
        conn, r = self._open("GET", path,
                             headers={"Accept": "text/event-stream"})
        try:
            if r.status != 200:
                raise self._error("GET", path, r.status, r.read())
            name, data = None, []
            while True:
                if deadline is not None:  # keepalives come every 15 s
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    conn.sock.settimeout(min(left, 20.0))
                try:
                    line = r.readline()
                except socket.timeout:
                    return
                except (http.client.HTTPException, OSError) as e:
                    raise _err(TransferError, "transfer_interrupted",
                               f"GET {path}: {e}") from None
                if not line:
                    return
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and name:
                    if name == "job":
                        j = Job(json.loads("\n".join(data)))
                        yield j
                        if j.finished:
                            return
                    name, data = None, []
        finally:
            conn.close()

    def wait(self, job, progress=True, timeout=None, check=True):
        """Follow the job until it is final; the Job. Live from the job's
        event stream, polling (backoff 0.1 s to 2 s) where the server has
        none or the stream breaks.

        progress: per-layer progress on stderr (a bar on a terminal).
        timeout: seconds (None: no limit) -> WaitTimeoutError. check: raise
        JobFailedError when it failed or was cancelled."""
        jid = _job_id(job)
        bar = _Progress(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1

        def show(j):
            frac = (j.layers_done / j.layers_total) if j.layers_total \
                else 0.0
            cur = j.current
            where = (f", {cur['layer']}: {cur['step']} "
                     f"{100 * cur['fraction']:.0f}%") if cur else ""
            bar.show(f"{j.id} {j.state} {j.layers_done}/"
                     f"{j.layers_total} layers{where}", frac)

        try:
            if not self.offline:
                try:
                    for j in self._events(jid, deadline):
                        show(j)
                except (TransferError, NotFoundError):
                    pass  # poll instead (a 404 for the job itself recurs)
            while True:
                j = self.job(jid)
                show(j)
                if j.finished:
                    break
                if self.offline:
                    raise _err(OfflineMissError, "offline_miss",
                               f"wait {jid}: offline, and the cached job is "
                               f"{j.state}")
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise _err(WaitTimeoutError, "timeout",
                               f"wait {jid}: still {j.state} after "
                               f"{timeout} s", job=j)
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)
        finally:
            bar.end()
        if check and j.state != "succeeded":
            err = j.error or {}
            raise _err(JobFailedError, "server_error",
                       f"job {jid} {j.state}"
                       + (f": {err.get('code')}: {err.get('message')}"
                          if err else ""), job=j)
        return j

    # -- fetch ----------------------------------------------------------------

    def _record(self, jid):
        path = job_record_path(self.cache, jid)
        try:
            with open(path, "rb") as f:
                rec = json.load(f)
        except FileNotFoundError:
            raise _err(OfflineMissError, "offline_miss",
                       f"job {jid} is not in the cache {self.cache} (fetch "
                       f"it once online first)") from None
        if not isinstance(rec.get("job"), dict):
            raise _err(OfflineMissError, "offline_miss",
                       f"{path}: not a job record")
        return rec

    def _save_record(self, job):
        path = job_record_path(self.cache, job.id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rec = {"format": "decompd.cache.job", "version": 1,
               "server": self.url, "job": job.doc,
               "artifacts": {n: {"digest": a["digest"], "size": a["size"],
                                 "media_type": a.get("media_type", "")}
                             for n, a in job.artifacts.items()}}
        _write_atomic(path, json.dumps(rec, indent=1).encode())

    def fetch(self, job, dest=None, only=None, progress=False,
              parallel=DEFAULT_PARALLEL):
        """Fetch a succeeded job's artifacts into the cache, `parallel` at a
        time (each on a connection of its own), each verified (SHA-256) and
        resumed from a partial file when one is left; with `dest`, copy
        them there once all are verified (an index file last). Returns
        {name: local path}.

        only: an artifact name, or a list of names (default: all). Artifact
        names must be plain file names (else ServerError). After the first
        failure no new transfer starts, those under way finish, and the
        failure is raised (a cut transfer keeps its partial file; the next
        fetch resumes it); KeyboardInterrupt stops them all, partial files
        kept."""
        if type(parallel) is not int or not 1 <= parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel={parallel!r}: give 1 to "
                             f"{MAX_PARALLEL} transfers at once")
        j = job if isinstance(job, Job) and self.offline is False and \
            job.artifacts and job.state == "succeeded" else self.job(job)
        if j.state != "succeeded":
            raise _err(ConflictError, "conflict",
                       f"job {j.id} is {j.state}: artifacts exist once it "
                       f"has succeeded")
        for n, a in j.artifacts.items():
            why = artifact_name_problem(n)
            if why:
                raise _err(ServerError, "server_error",
                           f"job {j.id} lists an artifact named {n!r}, which "
                           f"{why}: refused")
            try:
                _hex(a.get("digest", ""))
                if type(a.get("size")) is not int or a["size"] < 0:
                    raise ValueError
            except ValueError:
                raise _err(ServerError, "server_error",
                           f"job {j.id}: artifact {n} has no usable digest "
                           f"and size ({a.get('digest')!r})") from None
        if len(j.artifacts) != len(j.doc.get("artifacts") or []):
            raise _err(ServerError, "server_error",
                       f"job {j.id} lists an artifact twice")
        names = list(j.artifacts)
        if only is not None:
            want = [only] if isinstance(only, str) else list(only)
            missing = [n for n in want if n not in j.artifacts]
            if missing:
                raise _err(NotFoundError, "not_found",
                           f"job {j.id} has no artifact {missing[0]!r}")
            names = list(dict.fromkeys(want))
        # One transfer per distinct blob.
        first = {}
        for n in names:
            first.setdefault(j.artifacts[n]["digest"], n)
        todo = list(first.values())
        bar = _Progress(progress)
        prog = _FetchProgress(bar, {n: int(j.artifacts[n]["size"])
                                    for n in todo})
        stop = threading.Event()
        blobs, errors = {}, []
        lock = threading.Lock()

        def one(n):
            with lock:
                if errors or stop.is_set():
                    return  # after a failure, start nothing more
            try:
                blobs[n] = self._fetch_blob(j.id, j.artifacts[n], prog, stop)
            except BaseException as e:  # noqa: B902 (re-raised below)
                with lock:
                    errors.append(e)

        pool = ThreadPoolExecutor(max_workers=min(parallel, len(todo) or 1),
                                  thread_name_prefix="decompd-fetch")
        try:
            futures = [pool.submit(one, n) for n in todo]
            for f in futures:
                f.result()
        except BaseException:
            stop.set()  # KeyboardInterrupt: stop every transfer
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.end()
        if errors:
            e = errors[0]
            if isinstance(e, _Stopped):
                raise KeyboardInterrupt
            raise e
        paths = {n: blobs[first[j.artifacts[n]["digest"]]] for n in names}
        if not self.offline:
            self._save_record(j)
        if dest is not None:
            dest = os.fspath(dest)
            try:
                os.makedirs(dest, exist_ok=True)
            except OSError as e:
                raise _disk_error(e, dest) from None
            # Index files last: a folder with an index has all its shards.
            for n in sorted(names, key=lambda n: n.endswith(".index.json")):
                target = os.path.join(dest, n)
                _copy_atomic(paths[n], target)
                paths[n] = target
        return paths

    def _fetch_blob(self, jid, art, prog, stop):
        name, digest, size = art["name"], art["digest"], int(art["size"])
        hexd = _hex(digest)
        final = blob_path(self.cache, digest)
        corrupt = False
        if os.path.exists(final):
            if _sha256_file(final).hexdigest() == hexd:
                prog.update(name, size, cached=True)
                return final
            corrupt = True
            if not self.offline:
                os.unlink(final)
        if self.offline:
            if corrupt:
                raise _err(DigestMismatchError, "digest_mismatch",
                           f"{final} ({name} of job {jid}) is corrupt: its "
                           f"SHA-256 is not {digest}; offline mode cannot "
                           f"fetch it again")
            raise _err(OfflineMissError, "offline_miss",
                       f"{name} of job {jid} ({digest}) is not in the cache "
                       f"{self.cache}")
        tmp_dir = os.path.join(self.cache, "tmp")
        try:
            os.makedirs(tmp_dir, exist_ok=True)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            part, have = _claim_partial(tmp_dir, hexd)
        except OSError as e:
            raise _disk_error(e, tmp_dir) from None
        keep = False
        try:
            for attempt in range(2):
                if have == size and _sha256_file(part).hexdigest() == hexd:
                    break
                frm = have if 0 < have < size else 0
                h = _sha256_file(part, frm) if frm else hashlib.sha256()
                got, restarted, written = self._download(
                    jid, name, hexd, size, part, frm, h, prog, stop)
                if got is None:  # 416: our partial is not their prefix
                    have = 0
                    continue
                total = (0 if restarted else frm) + written
                if total == size and got == hexd:
                    break
                if frm and not restarted and attempt == 0:
                    have = 0
                    continue
                raise _err(DigestMismatchError, "digest_mismatch",
                           f"fetch {name} of job {jid}: the {total} bytes "
                           f"received hash to sha256:{got}, the job lists "
                           f"{digest} ({size} bytes); the download was "
                           f"discarded")
            else:
                raise _err(ServerError, "server_error",
                           f"fetch {name} of job {jid}: the server refused "
                           f"every range")
            os.replace(part, final)
            part = None
            prog.update(name, size, final=True)
            return final
        except (TransferError, _Stopped):
            keep = True
            raise
        finally:
            if part and not (keep and os.path.getsize(part) > 0):
                try:
                    os.unlink(part)
                except OSError:
                    pass

    def _download(self, jid, name, hexd, size, part, frm, h, prog, stop):
        """GET the artifact into `part` from byte `frm` (h holds the hash
        of the kept bytes). (hex digest or None after a 416, restarted,
        bytes written)."""
        path = f"/v1/jobs/{jid}/artifacts/{urllib.parse.quote(name)}"
        headers = {}
        if frm:
            headers["Range"] = f"bytes={frm}-"
            headers["If-Range"] = f'"sha256:{hexd}"'
        conn, r = self._open("GET", path, None, headers)
        written, restarted = 0, False
        try:
            if r.status == 416:
                r.read()
                return None, False, 0
            if r.status // 100 != 2:
                raise self._error("GET", path, r.status, r.read())
            if r.status == 200:
                restarted = frm > 0
                if restarted:
                    h = hashlib.sha256()
                start = 0
            elif r.status == 206 and frm:
                cr = _parse_content_range(r.getheader("Content-Range"))
                if not cr or cr[0] != frm or cr[1] != size - 1 or (
                        cr[2] >= 0 and cr[2] != size):
                    raise _err(ServerError, "server_error",
                               f"fetch {name}: asked for bytes {frm}- of "
                               f"{size}, the server answered Content-Range "
                               f"{r.getheader('Content-Range')!r}")
                start = frm
            else:
                raise _err(ServerError, "server_error",
                           f"fetch {name}: unexpected {r.status}")
            try:
                f = open(part, "r+b")
            except OSError as e:
                raise _disk_error(e, part) from None
            with f:
                f.seek(start)
                f.truncate()
                while True:
                    if stop.is_set():
                        f.flush()
                        raise _Stopped(name)
                    try:
                        b = r.read(_PIECE)
                    except (http.client.HTTPException, OSError) as e:
                        raise _err(
                            TransferError, "transfer_interrupted",
                            f"GET {self.url}{path}: the connection broke "
                            f"after {start + written} of {size} bytes "
                            f"({e}); they are kept and the next fetch "
                            f"resumes from there") from None
                    if not b:
                        break
                    if start + written + len(b) > size:
                        raise _err(DigestMismatchError, "digest_mismatch",
                                   f"fetch {name}: the server sent more "
                                   f"than the {size} bytes the job lists")
                    try:
                        f.write(b)
                    except OSError as e:
                        raise _disk_error(e, f"fetch {name}: writing "
                                          f"{part}") from None
                    h.update(b)
                    written += len(b)
                    prog.update(name, start + written)
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as e:
                    raise _disk_error(e, part) from None
            if start + written < size:
                raise _err(TransferError, "transfer_interrupted",
                           f"GET {self.url}{path}: the answer ended after "
                           f"{start + written} of {size} bytes; they are "
                           f"kept and the next fetch resumes from there")
            return h.hexdigest(), restarted, written
        finally:
            conn.close()

    # -- into training --------------------------------------------------------

    def pull(self, model, job, *, progress=False, parallel=DEFAULT_PARALLEL):
        """Fetch a succeeded job's weights and info file, give `model` the
        decomposed structure (decompose_network) and load the weights;
        (model, changes). Like decompose_network, a bare nn.Conv2d or
        nn.Linear is left untouched and its replacement returned.

        The weights come from the job's sharded output when it has one
        (model.safetensors.index.json and the shards its weight_map names,
        fetched `parallel` at a time and read with load_safetensors, in
        place in the cache), else from decomposed_weights.pth (else
        decomposed_weights.safetensors)."""
        from .tensor_decompose import decompose_network
        j = self.job(job)
        state = self._pulled_state(j, progress, parallel)
        paths = self.fetch(j, only=ARTIFACT_INFO)
        aliases = _conv_aliases(model)
        new, changes = decompose_network(model, paths[ARTIFACT_INFO])
        if _is_bare(model):
            # Sent under the engine's name for a bare layer (module_payload).
            root = _root(model)
            state = {k[len(root) + 1:]: v for k, v in state.items()
                     if k.startswith(root + ".")}
        new.load_state_dict(_with_aliases(state, aliases, changes))
        return new, changes

    def _pulled_state(self, j, progress, parallel):
        """The decomposed state dict of succeeded job `j`, fetched."""
        import torch
        from .safetensors_io import load_safetensors, looks_like_shard, \
            read_index
        if j.state == "succeeded" and ARTIFACT_INDEX in j.artifacts:
            index = self.fetch(j, only=ARTIFACT_INDEX)[ARTIFACT_INDEX]
            wmap, _ = read_index(index)
            named = list(dict.fromkeys(wmap.values()))
            for s in named:
                if s not in j.artifacts:
                    raise _err(NotFoundError, "not_found",
                               f"job {j.id}: {ARTIFACT_INDEX} puts tensors "
                               f"in shard {s}, which the job does not list")
            # Shards the job lists but the index leaves out are refused by
            # the reader (unreferenced shard), as in a folder.
            shards = named + [n for n in j.artifacts
                              if looks_like_shard(n) and n not in named]
            paths = self.fetch(j, only=shards, progress=progress,
                               parallel=parallel)
            return load_safetensors(index, shards=paths)
        if j.state == "succeeded" and ARTIFACT_WEIGHTS not in j.artifacts \
                and ARTIFACT_SAFETENSORS in j.artifacts:
            p = self.fetch(j, only=ARTIFACT_SAFETENSORS, progress=progress)
            return load_safetensors(p[ARTIFACT_SAFETENSORS])
        p = self.fetch(j, only=ARTIFACT_WEIGHTS, progress=progress)
        return torch.load(p[ARTIFACT_WEIGHTS], map_location="cpu",
                          weights_only=True)

    def decompose(self, model, decompose_info_path=None, *, policy=None,
                  example_input=None, progress=True, calibration=None,
                  profile=None):
        """auto_decomposition on the service: submit the live module (with
        a calibration and a latency profile, as ``submit`` takes them),
        wait, pull; (model, changes). decompose_info_path gets a copy of
        the info file (its folder is made)."""
        job = self.submit(model, policy=policy, example_input=example_input,
                          calibration=calibration, profile=profile)
        job = self.wait(job, progress=progress)
        new, changes = self.pull(model, job)
        if decompose_info_path is not None:
            path = os.fspath(decompose_info_path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            _copy_atomic(self.fetch(job, only=ARTIFACT_INFO)[ARTIFACT_INFO],
                         path)
        return new, changes


def _profile_body(profile):
    """What attach_profile sends: a file path as it is (streamed), else the
    document's JSON bytes (JSON text as given; a dict, or what an object's
    to_json() gives, encoded)."""
    if callable(getattr(profile, "to_json", None)):
        profile = profile.to_json()
    if isinstance(profile, dict):
        return json.dumps(profile, allow_nan=False).encode()
    if isinstance(profile, (bytes, bytearray, memoryview)):
        return bytes(profile)
    if isinstance(profile, str) and profile.lstrip().startswith("{"):
        return profile.encode()
    if isinstance(profile, (str, os.PathLike)):
        return os.fspath(profile)
    raise TypeError("profile: a file path, JSON text, a dict or an object "
                    "with to_json(), not %s" % type(profile).__name__)


def _is_bare(model):
    import torch
    return isinstance(model, (torch.nn.Conv2d, torch.nn.Linear))


def _root(model):
    """The name a bare nn.Conv2d's (nn.Linear's) tensors and spec entry get:
    the engine needs a non-empty layer name; decompd.tensor_decompose uses
    the same (decompd.spec.root_name)."""
    from .spec import root_name
    return root_name(model)


def _conv_aliases(model):
    """{first name: [other names]} of every Conv2d or Linear reachable under
    several names (one object shared by two parents): the spec and the
    engine know it by its first name only."""
    names = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if _is_bare(m):
            names.setdefault(id(m), []).append(name)
    return {ns[0]: ns[1:] for ns in names.values() if len(ns) > 1}


def _with_aliases(state, aliases, changes):
    """The decomposed file's state dict for a model whose shared convs were
    replaced under every name: a decomposed conv's new tensors are copied
    to its other names, and the file's entries for the old conv under those
    names (the module's state dict had them) are dropped."""
    out = dict(state)
    for first, others in aliases.items():
        if first not in changes:
            continue
        new_keys = [k for k in state if k.startswith(first + ".")]
        for other in others:
            for k in [k for k in out if k.startswith(other + ".")]:
                del out[k]
            for k in new_keys:
                out[other + k[len(first):]] = state[k]
    return out


def module_payload(model, example_input=None):
    """(spec dict, state dict) of a live module as the service gets it: the
    spec the in-process path makes (decompd.spec) and the module's state
    dict (every tensor, so the decomposed file loads with strict=True)."""
    from .spec import input_sizes, layer_spec, walk
    refs = walk(model)
    sizes = input_sizes(model, example_input) if example_input is not None \
        else None
    bare = _is_bare(model)
    root = _root(model)
    spec = layer_spec(refs, (lambda n: n or root), sizes)
    state = {}
    for k, v in model.state_dict().items():
        state[(root + "." + k) if bare else k] = v.detach()
    return spec, state


def _is_torchscript(path):
    """A zip holding constants.pkl (DESIGN.md, "Known pitfalls")."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl"
                       for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
