"""decompd.latency — latency measured where the model runs (DESIGN.md,
"Latency, not only MACs"; issue 16). decompd.profile and decompd.Profile
are this file's profile() and Profile (the module is not called "profile"
so that the package attribute decompd.profile stays the function).

Fewer MACs is often not faster: the device's kernels decide. This file owns
measuring, in the user's process and on the user's device, how long each
decomposable layer takes as it is and as each candidate pair over a grid of
ranks, and the Profile that carries those times to the engine (the JSON text
src/core/profile.c reads; decomp_options.profile):

- ``profile(model, example_input, ...)``: one forward pass of
  ``example_input`` (eval mode, no grad, modes restored) with a forward
  hook on every plain nn.Conv2d and nn.Linear (decompd.spec); inside the
  hook, with the layer's real input (batch and size of example_input), the
  layer and each candidate pair are timed through PyTorch's own modules —
  the same pairs decompd builds (tensor_decompose._derive_*): spatial
  vertical-first (kh,1) then (1,kw) and its horizontal-first mirror,
  channel kh×kw → R then 1×1, Linear in → R → out. Weights are random (the
  values do not change the time, no SVD is needed). The device is
  synchronised after every sample (torch.cuda.synchronize,
  torch.<device>.synchronize, else reading one element of the output back).
- How the times are taken, so that a change in the machine's load over the
  minutes a profile takes does not skew them (a shared machine's load
  drifts; a budget choosing the candidates that happened to measure fast
  would inherit the noise):
  1. Within a layer, round-robin: after ``warmup`` runs of each, the layer
     and every candidate pair are sampled once per round, in an order
     shuffled each round (seeded: the same for every run), for ``repeats``
     rounds. A candidate's *ratio* is the median over the rounds of its
     sample divided by the layer's sample in the same round, so it compares
     the two at the same moments. A layer whose pairs hold more than
     _GROUP_BYTES of weights is timed in groups of pairs, each group with
     the layer in every round (memory stays within one layer's pairs).
  2. Across layers, after that: ``repeats`` more forward passes of
     example_input, each timing every profiled layer once (the first call
     of each, with its real input), so each pass is a round over all the
     layers' originals within a second or so. A layer's ``time`` is the
     median over these passes; each candidate's time is its ratio times
     that. The layers' times are then consistent with each other (taken at
     the same moments) and with the model they sum into; the load of the
     last passes sets the scale of every time. Each of these passes is
     followed by a plain forward pass, timed whole: their median is
     ``model_time``, with which the engine counts the rest of the model
     (norms, activations, pooling, layers the policy leaves out) at its
     measured time, so a ``latency_reduction`` is the whole model's. It is
     measured only when the model's parameters are on the profiled device
     and dtype (otherwise the target covers the profiled layers).
  A layer that did not run again in those passes keeps the median of its
  own rounds (logged).
- ``Profile``: the result, ``.save``/``.load`` (JSON), ``.to_json()``,
  ``.digest``; loading checks the file's structure (a clear ProfileError,
  naming the layer, for a non-finite or negative time, an empty grid, ranks
  that do not increase). Whether it fits a model is the engine's check
  (DECOMP_ERR_BAD_PROFILE, a ValueError naming the layer).

The format (version 1):

    {"format": "decompd.profile", "version": 1, "device": "cpu",
     "device_name": "...", "torch_version": "...", "dtype": "float32",
     "input_shape": [8, 3, 224, 224], "warmup": 2, "repeats": 5,
     "model_time": seconds,
     "layers": {NAME: {"type": "Conv2d", "weight_shape": [O, I/g, kh, kw],
                       "input_shape": [...], "calls": 1, "time": seconds,
                       "candidates": [{"method": "spatial_svd",
                                       "order": "vertical_first",
                                       "ranks": [...], "times": [...]},
                                      {"method": "channel_svd", ...}]}}}

A Linear's weight_shape is [out, in] and its one candidate is "svd". Times
are seconds per forward call of the whole batch; a layer called several
times in one forward counts each call ("calls"). decompd.profile also
writes "timing": "interleaved" (the scheme above) and per layer
"round_time", the layer's median in its own rounds before the rescaling (a
round_time far from time says the load moved while profiling); the engine
ignores both.
"""

import hashlib
import json
import logging
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Mapping

import torch
import torch.nn as nn

from ._files import write_atomic
from ._progress import Reporter, _bar_wanted
from .errors import ProfileError
from .spec import (conv_fields, is_decomposable, is_plain_conv, root_name,
                   walk)

__all__ = ["profile", "Profile", "FORMAT", "VERSION", "DEFAULT_RANKS"]

FORMAT = "decompd.profile"
VERSION = 1
# Points of the default grid per candidate (see _grid).
DEFAULT_RANKS = 6
# The default grid runs up to this many times the rank at which a pair has
# the layer's MACs: above it a pair is not expected to be faster, and the
# budget never goes above the grid.
_GRID_SPAN = 1.25
# One timing sample lasts at least this long (tiny layers run several times
# per sample, so the timer's resolution does not dominate).
_MIN_SAMPLE = 1e-3
# The candidate pairs of one layer timed together hold at most this many
# bytes of weights (beyond it they are timed in groups, see the file
# comment; the next group's first pair is built before the last is freed); a
# single larger pair is a group of its own.
_GROUP_BYTES = 1 << 30
# The clock every sample reads (a seam: tests drive a fake one).
_clock = time.perf_counter

_METHOD_NAMES = {"spatial": "spatial_svd", "spatial_svd": "spatial_svd",
                 "channel": "channel_svd", "channel_svd": "channel_svd",
                 "svd": "svd", "linear": "svd"}
_ORDERS = ("vertical_first", "horizontal_first")

log = logging.getLogger("decompd")


# ---------------------------------------------------------------------------
# The Profile


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _seconds(v):
    """v as a finite, non-negative number of seconds, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v >= 0 else None


def _check(data, where):
    """Check a profile's structure (not whether it fits a model: that is the
    engine's); ProfileError naming the layer."""

    def bad(msg):
        return ProfileError(f"{where}: {msg}")

    if not isinstance(data, Mapping):
        raise bad("not a JSON object")
    if data.get("format") != FORMAT:
        raise bad(f'not a decompd profile ("format" is not "{FORMAT}")')
    if data.get("version") != VERSION or not _is_int(data.get("version")):
        raise bad(f"version {data.get('version')!r} is not {VERSION}")
    layers = data.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        raise bad('"layers" is not a non-empty object')
    if "model_time" in data and _seconds(data["model_time"]) is None:
        raise bad(f"model_time {data['model_time']!r} is not a finite, "
                  f"non-negative number of seconds")
    for name, layer in layers.items():
        def lbad(msg, name=name):
            return ProfileError(f"{where}: layer {name}: {msg}")

        if not isinstance(layer, Mapping):
            raise lbad("not a JSON object")
        kind = layer.get("type")
        if kind not in ("Conv2d", "Linear"):
            raise lbad(f"type {kind!r} is not Conv2d or Linear")
        shape = layer.get("weight_shape")
        nd = 4 if kind == "Conv2d" else 2
        if (not isinstance(shape, list) or len(shape) != nd
                or not all(_is_int(d) and d >= 1 for d in shape)):
            raise lbad(f"weight_shape {shape!r} is not {nd} positive "
                       f"integers")
        if _seconds(layer.get("time")) is None:
            raise lbad(f"time {layer.get('time')!r} is not a finite, "
                       f"non-negative number of seconds")
        cands = layer.get("candidates")
        if not isinstance(cands, list) or not cands:
            raise lbad("no candidates were measured (an empty grid)")
        for i, c in enumerate(cands):
            if not isinstance(c, Mapping):
                raise lbad(f"candidates[{i}] is not a JSON object")
            method = c.get("method")
            if method not in ("spatial_svd", "channel_svd", "svd"):
                raise lbad(f"candidates[{i}] method {method!r} is not "
                           f"spatial_svd, channel_svd or svd")
            if method == "spatial_svd" and c.get("order") not in _ORDERS:
                raise lbad(f"candidates[{i}] (spatial_svd) order "
                           f"{c.get('order')!r} is not vertical_first or "
                           f"horizontal_first")
            ranks, times = c.get("ranks"), c.get("times")
            if (not isinstance(ranks, list) or not isinstance(times, list)
                    or not ranks or len(ranks) != len(times)):
                raise lbad(f"candidates[{i}] ({method}): ranks and times "
                           f"must be non-empty lists of the same length "
                           f"(an empty grid?)")
            for j, r in enumerate(ranks):
                if not _is_int(r) or r < 1 or (j and r <= ranks[j - 1]):
                    raise lbad(f"candidates[{i}] ({method}): ranks[{j}] "
                               f"{r!r} is not a positive integer above the "
                               f"one before")
            for j, t in enumerate(times):
                if _seconds(t) is None:
                    raise lbad(f"candidates[{i}] ({method}): times[{j}] "
                               f"{t!r} is not a finite, non-negative number "
                               f"of seconds")


class Profile:
    """A latency profile: per layer, its measured time and each candidate
    pair's times over a grid of ranks (seconds; see the file comment).

    Build one with decompd.profile(), or Profile.load(path) /
    Profile.from_json(text); both check the structure (ProfileError)."""

    def __init__(self, data, where="profile"):
        _check(data, where)
        # A deep copy through JSON: the profile owns plain data only.
        self._data = json.loads(json.dumps(data, allow_nan=False))

    # -- fields --
    @property
    def layers(self):
        """{name: {"type", "weight_shape", "time", "candidates", …}}."""
        return self._data["layers"]

    @property
    def device_name(self):
        return self._data.get("device_name")

    @property
    def device(self):
        return self._data.get("device")

    @property
    def dtype(self):
        return self._data.get("dtype")

    @property
    def input_shape(self):
        return self._data.get("input_shape")

    @property
    def torch_version(self):
        return self._data.get("torch_version")

    @property
    def total_time(self):
        """The summed time of the profiled layers, as they are (seconds)."""
        return sum(float(v["time"]) for v in self.layers.values())

    @property
    def model_time(self):
        """The whole forward pass's time (seconds), or None when it was
        not measured (the model not on the profiled device and dtype)."""
        t = self._data.get("model_time")
        return None if t is None else float(t)

    def to_dict(self):
        return json.loads(json.dumps(self._data))

    # -- text and files --
    def to_json(self):
        """The profile as JSON text (what save() writes and the engine
        reads)."""
        # One line per top-level field and per layer: diffable, and small.
        def dump(v):
            return json.dumps(v, allow_nan=False, separators=(", ", ": "))

        head = [f" {dump(k)}: {dump(v)}" for k, v in self._data.items()
                if k != "layers"]
        layers = [f"  {dump(k)}: {dump(v)}"
                  for k, v in self._data["layers"].items()]
        return ("{\n" + ",\n".join(head) + ',\n "layers": {\n'
                + ",\n".join(layers) + "\n }\n}\n")

    @property
    def digest(self):
        """"sha256:<hex>" of to_json(), i.e. of the file save() writes."""
        return "sha256:" + hashlib.sha256(
            self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text, where="profile"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ProfileError(f"{where}: not valid JSON: {e}") from None
        return cls(data, where)

    def save(self, path):
        """Write to_json() to `path` atomically (a temporary file in the same
        folder, fsynced, renamed). Returns the digest."""
        return "sha256:" + write_atomic(
            path, [self.to_json().encode("utf-8")], ".profile.")

    @classmethod
    def load(cls, path):
        """Read and check a profile file (FileNotFoundError when missing,
        ProfileError naming the file and the layer when malformed)."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProfileError(f"{path}: not UTF-8 text ({e})") from None
        return cls.from_json(text, where=path)

    def __eq__(self, other):
        return isinstance(other, Profile) and self._data == other._data

    def __repr__(self):
        return (f"<decompd.Profile {len(self.layers)} layers on "
                f"{self.device_name!r}, {self.dtype}, input "
                f"{self.input_shape}>")


def _engine_text(obj):
    """(JSON text, "sha256:<hex>") to hand the engine for a Profile or the
    path of a profile file (its bytes as they are, checked first)."""
    if isinstance(obj, Profile):
        text = obj.to_json()
    elif isinstance(obj, (str, bytes, os.PathLike)):
        path = os.fsdecode(obj)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProfileError(f"{path}: not UTF-8 text ({e})") from None
        Profile.from_json(text, where=path)
    else:
        raise TypeError(f"profile must be a decompd.Profile or the path of a "
                        f"profile file, not {type(obj).__name__}")
    return text, "sha256:" + hashlib.sha256(
        text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# Measuring


def device_name(device):
    """A human name for `device`: the GPU's name, else the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except Exception:  # noqa: BLE001 - a name is informative only
            return "cuda"
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo", encoding="utf-8",
                      errors="replace") as f:
                for line in f:
                    if line.split(":")[0].strip() in ("model name",
                                                      "Processor"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return str(device)


def _synchronizer(device):
    """A function of a layer's output that returns once the device has
    finished computing it."""
    if device.type == "cpu":
        return lambda out: None
    if device.type == "cuda":
        return lambda out: torch.cuda.synchronize(device)
    sync = getattr(getattr(torch, device.type, None), "synchronize", None)
    if callable(sync):
        return lambda out: sync()
    # No synchronize for this device: reading a value back waits for it.
    return lambda out: out.reshape(-1)[:1].cpu()


def _calls_per_sample(fn, sync, warmup):
    """Run fn() `warmup` times, then once timed: how many calls one sample
    makes so that it lasts _MIN_SAMPLE."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(out)
    t0 = _clock()
    out = fn()
    sync(out)
    once = _clock() - t0
    return max(1, min(1000, math.ceil(_MIN_SAMPLE / max(once, 1e-9))))


def _sample(fn, inner, sync):
    """Seconds per call of fn() over `inner` calls (the device idle before:
    every sample ends synchronised)."""
    t0 = _clock()
    for _ in range(inner):
        out = fn()
    sync(out)
    return (_clock() - t0) / inner


def _candidates(module, methods):
    """[(method, order, max_rank)] decompd may replace `module` by (the
    engine's rules, src/core/policy.c core_layer_view_init_method)."""
    if isinstance(module, nn.Linear):
        if "svd" not in methods:
            return []
        return [("svd", None, min(module.in_features, module.out_features))]
    g = module.groups
    I, O = module.in_channels // g, module.out_channels // g
    kh, kw = module.kernel_size
    out = []
    if "spatial_svd" in methods and kh > 1 and kw > 1:
        out.append(("spatial_svd", "vertical_first", min(I * kh, O * kw)))
        out.append(("spatial_svd", "horizontal_first", min(I * kw, O * kh)))
    if "channel_svd" in methods:
        out.append(("channel_svd", None, min(I * kh * kw, O)))
    return out


def _macs(module, method, order, x, y):
    """(MACs of the layer, MACs per unit of rank of the pair) per sample,
    from its input x and output y (for placing the default grid)."""
    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
        return i * o, i + o
    g = module.groups
    I, Cout = module.in_channels // g, module.out_channels
    kh, kw = module.kernel_size
    Hi, Wi = x.shape[-2], x.shape[-1]
    Ho, Wo = y.shape[-2], y.shape[-1]
    before = Ho * Wo * Cout * I * kh * kw
    if method == "channel_svd":
        per = Ho * Wo * (g * I * kh * kw + Cout)
    elif order == "vertical_first":
        per = Ho * Wi * g * I * kh + Ho * Wo * Cout * kw
    else:
        per = Hi * Wo * g * I * kw + Ho * Wo * Cout * kh
    return before, per


def _grid(ranks, max_rank, before, per_rank):
    """The ranks to measure a candidate at (increasing, within
    [1, max_rank]); see profile()'s `ranks`."""
    if isinstance(ranks, int):
        top = min(max_rank, max(1, math.ceil(_GRID_SPAN * before
                                             / max(per_rank, 1))))
        grid = {max(1, round(top * i / ranks)) for i in range(1, ranks + 1)}
    elif all(_is_int(r) for r in ranks):
        grid = {min(r, max_rank) for r in ranks}
    else:
        grid = {min(max_rank, max(1, round(f * max_rank))) for f in ranks}
    return sorted(grid)


def _check_ranks(ranks):
    if ranks is None:
        return DEFAULT_RANKS
    if _is_int(ranks):
        if ranks < 1:
            raise ValueError(f"ranks={ranks}: a count of grid points must be "
                             f"at least 1")
        return ranks
    if isinstance(ranks, (str, bytes)) or not hasattr(ranks, "__iter__"):
        raise TypeError(f"ranks must be a count, a list of ranks or a list "
                        f"of fractions of the largest rank, not "
                        f"{type(ranks).__name__}")
    ranks = list(ranks)
    if not ranks:
        raise ValueError("ranks=[]: an empty grid (give at least one rank "
                         "or fraction)")
    if all(_is_int(r) for r in ranks):
        if min(ranks) < 1:
            raise ValueError(f"ranks={ranks}: ranks must be at least 1")
        return ranks
    for f in ranks:
        if (isinstance(f, bool) or not isinstance(f, (int, float))
                or not 0 < f <= 1):
            raise ValueError(f"ranks={ranks}: give whole ranks (ints) or "
                             f"fractions of the largest rank in (0, 1]")
    return [float(f) for f in ranks]


def _check_methods(methods):
    if methods is None:
        return {"spatial_svd", "channel_svd", "svd"}
    if isinstance(methods, str):
        methods = [methods]
    out = set()
    for m in methods:
        name = _METHOD_NAMES.get(m)
        if name is None:
            raise ValueError(f"methods: {m!r} is not one of "
                             f"{', '.join(sorted(_METHOD_NAMES))}")
        out.add(name)
    if not out:
        raise ValueError("methods=[]: no method to measure")
    return out


def _pair(module, method, order, rank, device, dtype):
    """The two modules decompd would put in place of `module` at `rank`
    (tensor_decompose's own builders), with random weights."""
    from .tensor_decompose import (_conv_from_fields, _derive_channel_pair,
                                   _derive_linear_pair, _derive_pair,
                                   _linear_from_fields)
    if method == "svd":
        plan = _derive_linear_pair(module, rank)
        parts = [_linear_from_fields(p, device, dtype, True) for p in plan]
    else:
        plan = (_derive_pair(module, rank, order) if method == "spatial_svd"
                else _derive_channel_pair(module, rank))
        parts = [_conv_from_fields(p, device, dtype, True) for p in plan]
    return _randomized(nn.Sequential(*parts))


def _randomized(module):
    """`module` with random weights of a trained layer's scale (skip_init
    leaves memory as it was, which may hold NaNs or denormals: slow on
    some CPUs)."""
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)))
    return module.eval()


def _as_args(example_input):
    return example_input if isinstance(example_input, tuple) \
        else (example_input,)


def _first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


def profile(model, example_input, *, device=None, dtype=None, methods=None,
            ranks=None, repeats=5, warmup=2):
    """Measure each decomposable layer of `model`, and its candidate pairs,
    on `device`, with the inputs `example_input` gives it.

    model: an nn.Module (not changed; train/eval flags are restored).
    example_input: a tensor, or a tuple of forward arguments: the batch and
      size the model will run at. It runs through the model (eval mode, no
      grad) once to time each plain nn.Conv2d / nn.Linear that runs, with
      its own input, against its candidates, then `repeats` times more to
      time all those layers together (see the file comment).
    device: where to time (default: example_input's device, else the
      model's); any torch device. dtype: default the model's floating dtype.
    methods: restrict the candidates ("spatial_svd", "channel_svd", "svd";
      "spatial", "channel", "linear" too). Default: all that apply.
    ranks: the grid per candidate: a count of points (default 6, spread
      evenly up to 1.25x the rank at which the pair has the layer's MACs,
      within the method's largest rank), a list of ranks (ints, clipped to
      the largest), or a list of fractions of the largest rank in (0, 1].
    repeats: rounds per layer (one sample of the layer and of each
      candidate per round; the median ratio to the layer is kept) and
      forward passes timing the layers together (the median is kept);
      warmup: runs of the layer and of each candidate before its rounds.

    Returns a Profile. TypeError/ValueError for bad arguments; RuntimeError
    when example_input does not run through the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not "
                        f"{type(model).__name__}")
    args = _as_args(example_input)
    first = _first_tensor(args)
    if first is None:
        raise TypeError("example_input must be a tensor or a tuple of "
                        "forward arguments holding one")
    if not _is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats={repeats!r}: must be an integer >= 1")
    if not _is_int(warmup) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: must be an integer >= 0")
    grid_spec = _check_ranks(ranks)
    wanted = _check_methods(methods)
    params = [p for p in model.parameters() if p.is_floating_point()]
    device = torch.device(device) if device is not None else first.device
    if dtype is None:
        dtype = params[0].dtype if params else first.dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, not {dtype!r}")
    sync = _synchronizer(device)

    refs = walk(model)
    targets = {}
    for ref in refs.values():
        m = ref.module
        if is_decomposable(m) and _candidates(m, wanted):
            targets[id(m)] = ref.name or root_name(m)
    layers = {}
    ratios = {}    # name -> per candidate, per rank: time / the layer's
    timers = {}    # name -> (the module timed, calls per sample)
    calls = {}
    together = {}  # name -> the layer's samples in the passes over all
    reporter = _ProfileReporter(len(targets))

    busy = []  # timing a layer calls it again: those calls are not counted

    def hook(module, inputs, _output):
        # After the layer ran: an input the layer refuses is the model's
        # error, not the profile's.
        name = targets.get(id(module))
        if name is None or busy:
            return
        calls[name] = calls.get(name, 0) + 1
        if name in layers:
            return
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            log.info("%s: its input is not a floating tensor: not profiled",
                     name)
            return
        busy.append(name)
        try:
            layers[name], ratios[name], timers[name] = _measure(
                name, module, x.detach(), device, dtype, wanted, grid_spec,
                warmup, repeats, sync, reporter)
        finally:
            busy.pop()

    seen = set()

    def pass_hook(module, inputs, _output):
        # One sample of each profiled layer per forward pass: its first call.
        name = targets.get(id(module))
        if name is None or name not in timers or name in seen:
            return
        seen.add(name)
        layer, inner = timers[name]
        try:
            x = inputs[0].detach().to(device=device, dtype=dtype)
            sync(x)   # the model's own work so far is not this sample's
            t = _sample(lambda: layer(x), inner, sync)
        except Exception as e:  # noqa: BLE001 - named and carried out
            raise _Measuring(RuntimeError(
                f"{name}: profiling failed: {type(e).__name__}: {e}")) from e
        together.setdefault(name, []).append(t)

    # The whole forward pass as it is, beside each pass over the layers
    # (model_time: the engine counts what the layers do not take at its
    # time) — when the model itself runs on the profiled device and dtype.
    whole = []
    own = all(p.device == device and (not p.is_floating_point()
                                      or p.dtype == dtype)
              for p in model.parameters())

    def plain_pass():
        out = _forward(model, args)
        sync(out if isinstance(out, torch.Tensor) else first)

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if id(m) in targets]
    try:
        model.eval()
        with torch.no_grad():
            _forward(model, args)
            for h in handles:
                h.remove()
            handles = [m.register_forward_hook(pass_hook)
                       for m in model.modules() if id(m) in targets]
            for k in range(repeats if layers else 0):
                seen.clear()
                reporter.together(k / repeats)
                _forward(model, args)
                if own:  # the hooks are idle now: every layer is seen
                    whole.append(_sample(plain_pass, 1, lambda out: None))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        reporter.close()
    if not layers:
        raise ValueError("no Conv2d or Linear layer of the model ran on "
                         "example_input: nothing to profile")
    timers.clear()   # the copies made for another device or dtype
    for name, entry in layers.items():
        if together.get(name):
            t = statistics.median(together[name])
        else:
            log.info("%s: did not run again in the passes over all layers: "
                     "its time is its own rounds' median", name)
            t = entry["round_time"]
        n = calls.get(name, 1)
        if n > 1:  # each call costs the time measured for one
            entry["calls"] = n
        entry["time"] = t * n
        entry["round_time"] *= n
        for c, rs in zip(entry["candidates"], ratios[name]):
            c["times"] = [r * t * n for r in rs]
    data = {
        "format": FORMAT, "version": VERSION,
        "device": str(device), "device_name": device_name(device),
        "torch_version": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "input_shape": list(first.shape),
        "warmup": warmup, "repeats": repeats, "timing": "interleaved",
        "layers": layers,
    }
    if whole:
        data["model_time"] = statistics.median(whole)
    else:
        log.info("the model's parameters are not on %s in %s: no "
                 "model_time (latency_reduction then counts the profiled "
                 "layers only)", device, dtype)
    return Profile(data)


def _forward(model, args):
    try:
        return model(*args)
    except _Measuring as e:
        raise e.error from None
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"example_input does not run through the "
                           f"model: {type(e).__name__}: {e}") from e


class _Measuring(Exception):
    """A failure while timing (not the model's own): carried out of the
    forward pass unchanged."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _measure(name, module, x, device, dtype, methods, grid_spec, warmup,
             repeats, sync, reporter):
    """(entry, ratios, timer) for one layer, timed with input x: its profile
    entry with "time" and "round_time" the layer's median over its rounds
    (profile() sets "time" from the passes over all layers, and the
    candidates' times from `ratios`: per candidate, per rank, the median
    ratio of the pair's time to the layer's in the same rounds); the timer
    (the module timed, calls per sample) for those passes."""
    try:
        x = x.to(device=device, dtype=dtype)
        w = module.weight
        if w.device == device and w.dtype == dtype:
            layer = module
        else:
            layer = _randomized(_copy_empty(module, device, dtype))
        channels_last = (x.dim() == 4 and not x.is_contiguous()
                         and x.is_contiguous(memory_format=torch.channels_last))
        with torch.no_grad():
            y = layer(x)
            cands = _candidates(module, methods)
            grids = []
            for method, order, max_rank in cands:
                before, per = _macs(module, method, order, x, y)
                grids.append(_grid(grid_spec, max_rank, before, per))
            del y
            # Every (candidate, rank) in a fixed order; grouped by weight
            # bytes as they are built.
            wanted = [(i, rank) for i, g in enumerate(grids) for rank in g]
            inner0 = _calls_per_sample(lambda: layer(x), sync, warmup)
            base = []            # the layer's samples, every round
            by_key = {}          # (i, rank) -> median ratio to the layer
            rng = random.Random(name)
            progress = [0, len(wanted) * repeats]

            def run(group):
                _rounds(group, layer, inner0, x, sync, warmup, repeats, rng,
                        base, by_key)
                progress[0] += len(group) * repeats
                reporter.inside(name, progress[0] / progress[1])

            group, size = [], 0
            for i, rank in wanted:
                method, order, _ = cands[i]
                pair = _pair(module, method, order, rank, device, dtype)
                if channels_last:
                    pair = pair.to(memory_format=torch.channels_last)
                nbytes = sum(p.numel() * p.element_size()
                             for p in pair.parameters())
                if group and size + nbytes > _GROUP_BYTES:
                    run(group)
                    group, size = [], 0
                group.append(((i, rank), pair))
                size += nbytes
            if group:
                run(group)
            del group
            t0 = statistics.median(base)
            entry = {
                "type": "Linear" if isinstance(module, nn.Linear)
                else "Conv2d",
                "weight_shape": list(module.weight.shape),
                "input_shape": list(x.shape),
                "time": t0, "round_time": t0, "candidates": [],
            }
            ratios = []
            best = None
            for i, ((method, order, _), grid) in enumerate(zip(cands, grids)):
                rs = [by_key[(i, rank)] for rank in grid]
                for rank, r in zip(grid, rs):
                    if best is None or r < best[0]:
                        best = (r, method, order, rank)
                c = {"method": method}
                if order:
                    c["order"] = order
                c.update(ranks=grid, times=[r * t0 for r in rs])
                entry["candidates"].append(c)
                ratios.append(rs)
    except Exception as e:  # noqa: BLE001 - named and carried out
        raise _Measuring(RuntimeError(f"{name}: profiling failed: "
                                      f"{type(e).__name__}: {e}")) from e
    reporter.layer_done(name, t0, best)
    return entry, ratios, (layer, inner0)


def _rounds(group, layer, inner0, x, sync, warmup, repeats, rng, base,
            ratios):
    """Time `layer` and each pair of `group` ([(key, pair)]) round-robin:
    `repeats` rounds of one sample each, in an order shuffled per round.
    Appends the layer's samples to `base`; sets ratios[key] to the median
    over the rounds of the pair's sample over the layer's in that round."""
    runs = [(None, lambda: layer(x), inner0)]
    for key, pair in group:
        fn = (lambda p: lambda: p(x))(pair)
        runs.append((key, fn, _calls_per_sample(fn, sync, warmup)))
    per = {key: [] for key, _, _ in runs[1:]}
    for _ in range(repeats):
        order = list(runs)
        rng.shuffle(order)
        got = {key: _sample(fn, inner, sync) for key, fn, inner in order}
        # A sample lasts _MIN_SAMPLE; the guard is for a clock that did not
        # move.
        t0 = max(got[None], 1e-12)
        base.append(got[None])
        for key in per:
            per[key].append(got[key] / t0)
    for key, rs in per.items():
        ratios[key] = statistics.median(rs)


def _copy_empty(module, device, dtype):
    from .tensor_decompose import _conv_from_fields, _linear_from_fields
    if is_plain_conv(module):
        return _conv_from_fields(conv_fields(module), device, dtype, True)
    return _linear_from_fields(
        {"in_features": module.in_features,
         "out_features": module.out_features,
         "bias": module.bias is not None}, device, dtype, True)


class _ProfileReporter(Reporter):
    """One INFO line per profiled layer and, on a terminal (for models of
    BAR_MIN_LAYERS layers and more; DECOMPD_PROGRESS=0/1 as for
    decompositions), a bar that moves inside each layer."""

    def __init__(self, total, stream=None):
        super().__init__(stream)
        self.total = total
        self.done = 0
        self.bar = _bar_wanted(total, self.stream)

    def inside(self, name, fraction):
        if self.bar:
            self._bar(name, fraction)

    def layer_done(self, name, t0, best):
        self.done += 1
        if best is None:
            log.info("%s: %.3f ms", name, t0 * 1e3)
        else:
            ratio, method, order, rank = best
            log.info("%s: %.3f ms; fastest candidate %s%s at rank %d: "
                     "%.3f ms (%.2f of the layer in the same rounds)", name,
                     t0 * 1e3, method, f" {order}" if order else "", rank,
                     ratio * t0 * 1e3, ratio)
        if self.bar:
            self._bar(name, 0.0)

    def together(self, fraction):
        """The passes timing every profiled layer together, `fraction`
        done."""
        if fraction == 0.0:
            self.total = self.done   # the layers that never ran are not
            log.info("timing the %d layer(s) together over forward passes",
                     self.done)
        if self.bar:
            self._bar("all layers together", 0.0, fraction)

    def _bar(self, name, part, together=None):
        total = max(self.total, 1)
        width = 24
        filled = min(width, int(width * (self.done + part) / total))
        tail = "" if together is None else f" {together:.0%}"
        self._write_line(f"decompd profile [{'#' * filled}"
                         f"{'.' * (width - filled)}] {self.done}/{total} "
                         f"{name}{tail}")

    def close(self):
        if self.bar and self.done:
            # Layers that never ran are not profiled: the bar ends full.
            self.total = self.done
            self._bar("done", 0.0)
        if self.bar:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        log.info("profiled %d layer(s) in %.2f s", self.done,
                 time.monotonic() - self.started)
