"""decompd._files — writing a file so that it is either whole or untouched.

The package writes three kinds of file for the user: decompose_info.json,
calibration files and latency profiles. Each goes through write_atomic: a
temporary file in the target's folder (made if missing), fsynced, given the
usual 0644 mode, then renamed over the target; on any failure the temporary
is removed and the target is as it was."""

import hashlib
import os
import tempfile


def write_atomic(path, chunks, prefix):
    """Write the bytes of `chunks` (an iterable of bytes-like objects) to
    `path` atomically; the temporary's name starts with `prefix`. Returns
    the SHA-256 hex digest of what was written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                h.update(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return h.hexdigest()
