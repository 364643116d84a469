"""Per-layer reporting: log lines through the "decompd" logger and, on a
terminal, a progress bar for models with many layers.

The engine reports each layer through its progress callback (SPECTRUM, START,
DONE, and WORKING inside a long layer); this file turns those reports into
one INFO line per finished layer and, when stderr is a terminal and the
model has at least BAR_MIN_LAYERS convs or a layer takes long, a one-line
bar redrawn in place. decompd.calibrate reports its batches the same way
(BatchReporter: a DEBUG line per batch, one INFO line at the end, and the bar
on a terminal for runs of at least BAR_MIN_LAYERS batches or of an unknown
number). No dependency (no tqdm).

DECOMPD_PROGRESS=0 turns the bar off, =1 forces it on (even off a
terminal).
"""

import logging
import os
import sys
import time

from ._c_constants import PHASE_DONE, PHASE_WORKING

__all__ = ["Reporter", "BatchReporter", "BAR_MIN_LAYERS"]

BAR_MIN_LAYERS = 8
_BAR_WIDTH = 24

log = logging.getLogger("decompd")

_DONE = PHASE_DONE
_WORKING = PHASE_WORKING  # inside a long layer


def _bar_wanted(total, stream, long_layer=False):
    env = os.environ.get("DECOMPD_PROGRESS", "").strip().lower()
    if env in ("0", "no", "false", "off"):
        return False
    if env in ("1", "yes", "true", "on"):
        return True
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and (total >= BAR_MIN_LAYERS or long_layer)


class Reporter:
    """Receives engine progress dicts (see _engine.decompose)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None  # decided at the first report, when total is known
        self.started = time.monotonic()
        self.decomposed = 0
        self.skipped = 0
        self._last_len = 0
        self._long_seen = False

    def __call__(self, p):
        working = p["phase"] == _WORKING
        if self.bar is None:
            self.bar = _bar_wanted(p["total"], self.stream)
        if working and self.bar is False and not self._long_seen:
            self._long_seen = True  # a long layer: a bar on a terminal
            self.bar = _bar_wanted(p["total"], self.stream, long_layer=True)
        if working:
            log.debug("%s: %s %.0f%% (%.1f s)", p["layer"],
                      "factors" if p["rank"] > 0 else "spectrum",
                      100 * p.get("fraction", 0.0), p["seconds"])
        if p["phase"] == _DONE:
            if p["skip_reason"] or p["rank"] <= 0:
                self.skipped += 1
                log.info("%s: left alone (%s)", p["layer"],
                         p["skip_reason"] or "not decomposed")
            else:
                self.decomposed += 1
                log.info("%s: rank %d of %d, %.2f s", p["layer"], p["rank"],
                         p["max_rank"], p["seconds"])
        if self.bar:
            done = p["index"] + (1 if p["phase"] == _DONE else 0)
            part = p.get("fraction", 0.0) if working else None
            self._draw(done, p["total"], p["layer"], part)

    def _draw(self, done, total, layer, part=None):
        total = max(total, 1)
        filled = int(_BAR_WIDTH * (done + (part or 0.0)) / total)
        text = (f"decompd [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
                f"{done}/{total} {layer}")
        if part is not None:
            text += f" {100 * part:.0f}%"
        self._write_line(text)

    def _write_line(self, text):
        """Redraw the bar's line in place with `text`."""
        text = "\r" + text
        if len(text) > 79:
            text = text[:79]
        pad = max(0, self._last_len - len(text))
        self._last_len = len(text)
        try:
            self.stream.write(text + " " * pad)
            self.stream.flush()
        except (OSError, ValueError):
            self.bar = False

    def close(self):
        if self.bar:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        log.info("decomposed %d layer(s), left %d alone, in %.2f s",
                 self.decomposed, self.skipped,
                 time.monotonic() - self.started)


class BatchReporter(Reporter):
    """decompd.calibrate's batches: step() after each batch, close() with
    the run's summary line. `total` is the number of batches when known
    (len() of the batches, or max_batches), else None."""

    def __init__(self, total=None, stream=None):
        super().__init__(stream)
        self.total = total
        self.bar = _bar_wanted(BAR_MIN_LAYERS if total is None else total,
                               self.stream)

    def step(self, done, samples):
        log.debug("calibrate: batch %d%s, %d samples so far", done,
                  f" of {self.total}" if self.total else "", samples)
        if not self.bar:
            return
        if self.total:
            filled = min(_BAR_WIDTH, int(_BAR_WIDTH * done / self.total))
            self._write_line(f"decompd calibrate [{'#' * filled}"
                             f"{'.' * (_BAR_WIDTH - filled)}] "
                             f"{done}/{self.total} batches")
        else:
            self._write_line(f"decompd calibrate: {done} batches")

    def close(self, summary=None):
        if self.bar:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        if summary:
            log.info("%s in %.2f s", summary,
                     time.monotonic() - self.started)
