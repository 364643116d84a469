"""decompd.profile and auto_decomposition(profile=) (issue 16), on the real
PyTorch and the real engine; no assertion depends on how long anything took:

- profiling a small model on the CPU times every Conv2d (1×1 too) and
  Linear that runs, with its weight shape, its real input shape and the
  candidates the engine would consider (spatial in both orders only for
  kh, kw > 1; channel; svd for a Linear) over increasing grids within each
  method's largest rank; ranks= and methods= shape the grid; the model's
  modes and hooks are as before;
- under a load that drifts several-fold while profiling (a fake clock that
  each Conv2d/Linear call advances by its MACs times the current load), each
  candidate's time relative to its layer, and each layer's relative to the
  others, stay what the MACs make them (the layer and its candidates are
  timed in interleaved rounds, in one group or a group per pair; the
  layers together in forward passes);
- save -> load gives an equal Profile, the file is to_json(), the digest is
  the file's sha256;
- the engine takes a measured profile under a latency budget and records
  it; on synthetic profiles with known curves a layer whose every candidate
  is slower than itself is left alone (latency budget; per-layer policies
  through the default max_slowdown), and the latency_reduction target is met on the
  predicted curve;
- a profile of another model (a missing layer, another weight shape), a
  non-finite or negative time and an empty grid are refused with a
  ValueError naming the layer; bad arguments get clear errors; the progress
  bar and the per-layer log lines appear.
"""

import copy
import hashlib
import json
import logging
import math

import pytest
import torch
import torch.nn as nn

import decompd
from decompd import Profile, ProfileError
from decompd.tensor_decompose import auto_decomposition

BATCH, SIZE = 2, 16


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 32, 1)               # 1×1: channel only
        self.c4 = nn.Conv2d(32, 32, (3, 1), padding=(1, 0))  # channel only
        self.unused = nn.Conv2d(32, 32, 3)           # never runs
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = self.c4(self.c3(x))
        return self.fc(x.mean((2, 3)))


def small():
    torch.manual_seed(0)
    return Small()


def example():
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator()
                       .manual_seed(1))


def quick_profile(model, **kw):
    kw.setdefault("ranks", 3)
    kw.setdefault("repeats", 1)
    kw.setdefault("warmup", 0)
    return decompd.profile(model, example(), **kw)


def max_rank(module, method, order=None):
    if method == "svd":
        return min(module.in_features, module.out_features)
    g = module.groups
    i, o = module.in_channels // g, module.out_channels // g
    kh, kw = module.kernel_size
    if method == "channel_svd":
        return min(i * kh * kw, o)
    if order == "vertical_first":
        return min(i * kh, o * kw)
    return min(i * kw, o * kh)


# --- measuring ----------------------------------------------------------------

def test_profile_times_every_layer_that_runs_with_its_shapes_and_candidates():
    model = small()
    prof = quick_profile(model)
    assert isinstance(prof, Profile)
    assert set(prof.layers) == {"c1", "c2", "c3", "c4", "fc"}
    assert prof.device == "cpu" and prof.dtype == "float32"
    assert prof.input_shape == [BATCH, 3, SIZE, SIZE]
    assert prof.torch_version == torch.__version__
    assert isinstance(prof.device_name, str) and prof.device_name
    want_inputs = {"c1": [BATCH, 3, SIZE, SIZE],
                   "c2": [BATCH, 16, SIZE, SIZE],
                   "c3": [BATCH, 32, SIZE // 2, SIZE // 2],
                   "c4": [BATCH, 32, SIZE // 2, SIZE // 2],
                   "fc": [BATCH, 32]}
    want_methods = {
        "c1": [("spatial_svd", "vertical_first"),
               ("spatial_svd", "horizontal_first"), ("channel_svd", None)],
        "c2": [("spatial_svd", "vertical_first"),
               ("spatial_svd", "horizontal_first"), ("channel_svd", None)],
        "c3": [("channel_svd", None)],
        "c4": [("channel_svd", None)],
        "fc": [("svd", None)]}
    for name, entry in prof.layers.items():
        module = model.get_submodule(name)
        assert entry["type"] == ("Linear" if name == "fc" else "Conv2d")
        assert entry["weight_shape"] == list(module.weight.shape)
        assert entry["input_shape"] == want_inputs[name]
        assert math.isfinite(entry["time"]) and entry["time"] >= 0
        got = [(c["method"], c.get("order")) for c in entry["candidates"]]
        assert got == want_methods[name], name
        for c in entry["candidates"]:
            top = max_rank(module, c["method"], c.get("order"))
            assert 1 <= len(c["ranks"]) <= 3
            assert c["ranks"] == sorted(set(c["ranks"]))
            assert 1 <= c["ranks"][0] and c["ranks"][-1] <= top
            assert len(c["times"]) == len(c["ranks"])
            assert all(math.isfinite(t) and t >= 0 for t in c["times"])


def test_ranks_and_methods_shape_the_grid():
    model = small()
    prof = quick_profile(model, ranks=[1, 2, 1000])   # whole ranks, clipped
    for name, entry in prof.layers.items():
        module = model.get_submodule(name)
        for c in entry["candidates"]:
            top = max_rank(module, c["method"], c.get("order"))
            assert c["ranks"] == sorted({1, 2, top}), (name, c)
    prof = quick_profile(model, ranks=[0.5, 1.0])      # fractions
    c = prof.layers["c2"]["candidates"][2]
    assert c["method"] == "channel_svd" and c["ranks"] == [16, 32]
    prof = quick_profile(model, methods=["channel"])
    assert set(prof.layers) == {"c1", "c2", "c3", "c4"}  # no Linear
    assert all([c["method"] for c in e["candidates"]] == ["channel_svd"]
               for e in prof.layers.values())
    # the default grid stays below ~1.25x the MAC break-even rank
    prof = quick_profile(model, ranks=None)
    c3 = prof.layers["c3"]["candidates"][0]   # 32x32 1x1: break-even 16
    assert len(c3["ranks"]) == 6 and c3["ranks"][-1] == 20


def test_profiling_leaves_the_model_as_it_was():
    model = small()
    model.train()
    model.c2.eval()
    state = copy.deepcopy(model.state_dict())
    prof = quick_profile(model)
    assert prof.layers
    assert model.training and not model.c2.training and model.c1.training
    assert all(not m._forward_pre_hooks and not m._forward_hooks
               for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bad_arguments_get_clear_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        decompd.profile("resnet", example())
    with pytest.raises(TypeError, match="example_input"):
        decompd.profile(small(), [1, 2, 3])
    wrong = torch.randn(1, 5, SIZE, SIZE)   # 5 channels, the model wants 3
    with pytest.raises(RuntimeError, match="example_input does not run"):
        decompd.profile(small(), wrong, repeats=1, warmup=0)
    with pytest.raises(ValueError, match="repeats"):
        decompd.profile(small(), example(), repeats=0)
    with pytest.raises(ValueError, match="empty grid"):
        decompd.profile(small(), example(), ranks=[])
    with pytest.raises(ValueError, match="fractions"):
        decompd.profile(small(), example(), ranks=[0.5, 2.5])
    with pytest.raises(ValueError, match="methods"):
        decompd.profile(small(), example(), methods=["tucker"])
    with pytest.raises(ValueError, match="nothing to profile"):
        decompd.profile(nn.Sequential(nn.ReLU()), example())


def test_progress_bar_and_per_layer_lines_appear(monkeypatch, capsys,
                                                 caplog):
    monkeypatch.setenv("DECOMPD_PROGRESS", "1")
    with caplog.at_level(logging.INFO, logger="decompd"):
        quick_profile(small())
    err = capsys.readouterr().err
    assert "decompd profile [" in err
    assert "5/5" in err
    lines = [r.getMessage() for r in caplog.records]
    for name in ("c1", "c2", "c3", "c4", "fc"):
        assert any(m.startswith(f"{name}: ") and "ms" in m for m in lines)
    assert any(m.startswith("profiled 5 layer(s)") for m in lines)


class DriftingClock:
    """A fake decompd.latency._clock: every Conv2d/Linear call (of any
    module, the model's and the candidates' alike) advances it by the
    call's MACs times UNIT times the load, and the load grows with the
    clock: load = 1 + t / RAMP. A module's true cost is its MACs; a profile
    that compares samples taken at different moments sees the load too."""

    UNIT = 1e-8     # seconds per MAC at load 1 (c1: about 2 ms)
    RAMP = 1.0      # seconds of fake time per unit of added load

    def __init__(self):
        self.t = 0.0
        self.frozen = False   # cost() reads MACs at load 1, clock unmoved

    def load(self):
        return 1.0 + self.t / self.RAMP

    def __call__(self):
        return self.t

    def hook(self, module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = output.numel() * module.in_channels // module.groups \
                * kh * kw
        elif isinstance(module, nn.Linear):
            macs = output.numel() * module.in_features
        else:
            return
        self.t += macs * self.UNIT * (1.0 if self.frozen else self.load())

    def cost(self, fn):
        t, self.frozen = self.t, True
        try:
            fn()
            return self.t - t
        finally:
            self.t, self.frozen = t, False


@pytest.mark.parametrize("group_bytes", [None, 1],
                         ids=["one_group", "a_group_per_pair"])
def test_interleaved_timing_keeps_ratios_right_under_a_drifting_load(
        monkeypatch, group_bytes):
    import decompd.latency as latency
    if group_bytes is not None:   # every pair timed in a group of its own
        monkeypatch.setattr(latency, "_GROUP_BYTES", group_bytes)
    clock = DriftingClock()
    model = small()
    inputs = {}

    def keep(name):
        def hook(_module, args, _output):
            inputs[name] = args[0]   # (returning it would replace the output)
        return hook

    saved = [model.get_submodule(n).register_forward_hook(keep(n))
             for n in ("c1", "c2", "c3", "c4", "fc")]
    with torch.no_grad():
        model(example())
    for h in saved:
        h.remove()
    monkeypatch.setattr(latency, "_clock", clock)
    handle = nn.modules.module.register_module_forward_hook(clock.hook)
    try:
        prof = decompd.profile(model, example(), ranks=6, repeats=7,
                               warmup=1)
        end_load = clock.load()
        with torch.no_grad():
            cost = {n: clock.cost(lambda n=n: model.get_submodule(n)(x))
                    for n, x in inputs.items()}
            pair_cost = {}
            for n, entry in prof.layers.items():
                m = model.get_submodule(n)
                for c in entry["candidates"]:
                    for r in c["ranks"]:
                        pair = latency._pair(m, c["method"], c.get("order"),
                                             r, torch.device("cpu"),
                                             torch.float32)
                        pair_cost[n, c["method"], c.get("order"), r] = \
                            clock.cost(lambda: pair(inputs[n]))
    finally:
        handle.remove()
    # The load grew over 4x during the profile, and the layers' own rounds
    # saw loads up to 3x apart (the same layer's time in its rounds and in
    # the final passes): times taken one after the other would carry that.
    # What is left is the load's growth within one round or one pass (up
    # to ~3% here), hence the 5% allowed.
    assert end_load > 4.0
    drift = [e["time"] / e["round_time"] for e in prof.layers.values()]
    assert max(drift) / min(drift) > 2.5
    # Each candidate against its layer: the MAC ratio.
    for n, entry in prof.layers.items():
        for c in entry["candidates"]:
            for r, t in zip(c["ranks"], c["times"]):
                want = pair_cost[n, c["method"], c.get("order"), r] / cost[n]
                assert t / entry["time"] == pytest.approx(want, rel=0.05), \
                    (n, c["method"], c.get("order"), r)
    # Layers against each other: their MAC ratios.
    for n, entry in prof.layers.items():
        want = cost[n] / cost["c1"]
        got = entry["time"] / prof.layers["c1"]["time"]
        assert got == pytest.approx(want, rel=0.05), n


# --- files ----------------------------------------------------------------------

def test_save_load_round_trip_is_equal_and_the_digest_is_the_files(tmp_path):
    prof = quick_profile(small())
    path = tmp_path / "sub" / "p.json"
    digest = prof.save(path)
    raw = path.read_bytes()
    assert raw.decode() == prof.to_json()
    assert digest == prof.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    back = Profile.load(path)
    assert back == prof
    assert back.to_dict() == json.loads(raw)
    assert Profile.from_json(prof.to_json()) == prof
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["p.json"]


def test_malformed_profile_files_name_the_file_and_layer(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="bad.json: not valid JSON"):
        Profile.load(bad)
    bad.write_text(json.dumps({"format": "decompd.calibration",
                               "version": 1, "layers": {}}))
    with pytest.raises(ProfileError, match="not a decompd profile"):
        Profile.load(bad)
    with pytest.raises(FileNotFoundError):
        Profile.load(tmp_path / "missing.json")


# --- the engine -----------------------------------------------------------------

def synthetic(model, curves, layer_times):
    """A profile of `model`'s named layers, every candidate of a layer on
    the same curve {name: (ranks, times)} (the points within its largest
    rank), layer times {name: seconds}."""
    layers = {}
    for name, (ranks, times) in curves.items():
        m = model.get_submodule(name)
        linear = isinstance(m, nn.Linear)
        kinds = ([("svd", None)] if linear else
                 [("channel_svd", None)] + (
                     [("spatial_svd", "vertical_first"),
                      ("spatial_svd", "horizontal_first")]
                     if min(m.kernel_size) > 1 else []))
        cands = []
        for method, order in kinds:
            top = max_rank(m, method, order)
            pts = [(r, t) for r, t in zip(ranks, times) if r <= top]
            c = {"method": method,
                 "ranks": [r for r, _ in pts], "times": [t for _, t in pts]}
            if order:
                c["order"] = order
            cands.append(c)
        layers[name] = {
            "type": "Linear" if linear else "Conv2d",
            "weight_shape": list(m.weight.shape),
            "time": layer_times[name], "candidates": cands}
    return Profile({"format": "decompd.profile", "version": 1,
                    "device_name": "synthetic", "dtype": "float32",
                    "input_shape": [BATCH, 3, SIZE, SIZE], "layers": layers})


def read_info(path):
    with open(path) as f:
        return json.load(f)


def test_engine_takes_a_measured_profile_under_a_latency_budget(tmp_path):
    model = small()
    prof = quick_profile(model)
    path = tmp_path / "p.json"
    prof.save(path)
    for given in (prof, str(path)):
        net = small()
        info_path = tmp_path / "info.json"
        net, changes = auto_decomposition(
            net, info_path, example_input=example(), profile=given,
            policy={"name": "budget", "latency_reduction": 1.2,
                    "types": ["Conv2d", "Linear"]})
        info = read_info(info_path)
        assert info["profile"]["digest"] == prof.digest
        assert info["profile"]["device_name"] == prof.device_name
        summary = info["summary"]
        # The whole model's: the layers and the rest at its measured time
        # (model_time, which noise may put below the layers' sum).
        assert prof.model_time is not None
        assert summary["latency_before"] == pytest.approx(
            max(prof.model_time, prof.total_time), rel=1e-6)
        assert summary["latency_other"] == pytest.approx(
            max(0.0, prof.model_time - prof.total_time), rel=1e-6, abs=1e-12)
        assert summary["latency_after"] <= summary["latency_before"]
        for layer in info["layers"]:
            assert layer["stats"]["latency_after"] < \
                layer["stats"]["latency_before"], layer["name"]
        net(example())   # the decomposed model runs


def test_a_layer_whose_every_candidate_is_slower_is_left_alone(tmp_path):
    model = small()
    curves = {"c1": ([4, 8, 16], [0.2, 0.4, 0.8]),     # faster than 1.0
              "c2": ([4, 8, 32], [1.5, 2.0, 3.0])}     # always slower
    prof = synthetic(model, curves, {"c1": 1.0, "c2": 1.0})
    # The latency budget never offers it; a per-layer policy is stopped
    # by max_slowdown (default 1.0 with a profile).
    policies = [{"name": "budget", "latency_reduction": 1.5},
                {"name": "fixed", "rank": 4},
                {"name": "energy", "energy": 0.5}]
    for policy in policies:
        info_path = tmp_path / "info.json"
        _, changes = auto_decomposition(small(), info_path, profile=prof,
                                        example_input=example(),
                                        policy=policy)
        assert "c2" not in changes, policy
        skipped = {s["name"]: s["reason"] for s in read_info(info_path)
                   .get("skipped", [])}
        assert "c2" in skipped and "profile" in skipped["c2"], skipped
    assert "c1" in changes


def test_latency_target_is_met_on_the_predicted_curve(tmp_path):
    model = small()
    # Times linear in rank from 0 (rank 0) to the layer's time at full
    # rank: a 2x target needs half the time on the predicted curve.
    curves, times = {}, {}
    for name in ("c1", "c2", "c3"):
        top = max_rank(model.get_submodule(name), "channel_svd")
        curves[name] = ([1, top], [1.0 / top, 1.0])
        times[name] = 1.0
    prof = synthetic(model, curves, times)
    info_path = tmp_path / "info.json"
    auto_decomposition(small(), info_path, profile=prof,
                       example_input=example(),
                       policy={"name": "budget", "latency_reduction": 2.0,
                               "methods": ["channel"],
                               "max_layer_error": 1.0})
    info = read_info(info_path)
    before = info["summary"]["latency_before"]
    after = info["summary"]["latency_after"]
    assert before == pytest.approx(3.0)
    # Met, to within one rank step of the coarsest curve.
    step = max(1.0 / max_rank(model.get_submodule(n), "channel_svd")
               for n in curves)
    assert before / 2.0 - step <= after <= before / 2.0 + 1e-9
    for layer in info["layers"]:
        top = max_rank(model.get_submodule(layer["name"]), "channel_svd")
        assert layer["stats"]["latency_after"] == pytest.approx(
            layer["rank"] / top)


def test_latency_target_counts_the_rest_of_the_model_at_its_measured_time(
        tmp_path):
    """With the whole forward pass's time (model_time), what the profiled
    layers do not take counts at its time: a 2x target on a model of 5 s
    whose three layers take 3 s needs them down to 0.5 s, not 1.5 s."""
    model = small()
    curves, times = {}, {}
    for name in ("c1", "c2", "c3"):
        top = max_rank(model.get_submodule(name), "channel_svd")
        curves[name] = ([1, top], [1.0 / top, 1.0])
        times[name] = 1.0
    doc = synthetic(model, curves, times).to_dict()
    doc["model_time"] = 5.0
    info_path = tmp_path / "info.json"
    auto_decomposition(small(), info_path, profile=Profile(doc),
                       example_input=example(),
                       policy={"name": "budget", "latency_reduction": 2.0,
                               "methods": ["channel"],
                               "max_layer_error": 1.0})
    summary = read_info(info_path)["summary"]
    assert summary["latency_other"] == pytest.approx(2.0)
    assert summary["latency_before"] == pytest.approx(5.0)
    step = max(1.0 / max_rank(model.get_submodule(n), "channel_svd")
               for n in curves)
    assert 2.5 - step <= summary["latency_after"] <= 2.5 + 1e-9
    # Out of reach (every layer at rank 1 still leaves 2 s): the floor,
    # reported as reached.
    doc["model_time"] = 30.0
    auto_decomposition(small(), info_path, profile=Profile(doc),
                       example_input=example(),
                       policy={"name": "budget", "latency_reduction": 2.0,
                               "methods": ["channel"],
                               "max_layer_error": 1.0})
    summary = read_info(info_path)["summary"]
    assert summary["latency_before"] == pytest.approx(30.0)
    assert summary["latency_after"] > 15.0
    # Below the layers' own sum (noise): the rest counts as nothing.
    doc["model_time"] = 2.0
    auto_decomposition(small(), info_path, profile=Profile(doc),
                       example_input=example(),
                       policy={"name": "budget", "latency_reduction": 2.0,
                               "methods": ["channel"],
                               "max_layer_error": 1.0})
    summary = read_info(info_path)["summary"]
    assert summary["latency_other"] == 0
    assert summary["latency_before"] == pytest.approx(3.0)
    for bad in (-1.0, "fast"):
        doc["model_time"] = bad
        with pytest.raises(ValueError, match="model_time"):
            auto_decomposition(small(), profile=Profile(doc),
                               policy={"name": "budget",
                                       "latency_reduction": 2.0})


def test_profile_of_another_model_is_refused_naming_the_layer(tmp_path):
    model = small()
    prof = quick_profile(model).to_dict()
    other = copy.deepcopy(prof)
    other["layers"]["encoder.conv9"] = other["layers"].pop("c3")
    with pytest.raises(ValueError, match="encoder.conv9"):
        auto_decomposition(small(), profile=Profile(other))
    other = copy.deepcopy(prof)
    other["layers"]["c2"]["weight_shape"] = [64, 16, 3, 3]
    with pytest.raises(ValueError, match=r"c2.*weight_shape"):
        auto_decomposition(small(), profile=Profile(other))


@pytest.mark.parametrize("damage,match", [
    (lambda e: e.update(time=float("nan")), "time"),
    (lambda e: e.update(time=-1e-3), "time"),
    (lambda e: e["candidates"][0]["times"].__setitem__(0, float("inf")),
     "times"),
    (lambda e: e["candidates"][0]["times"].__setitem__(0, -1.0), "times"),
    (lambda e: e.update(candidates=[]), "empty grid"),
    (lambda e: e["candidates"][0].update(ranks=[], times=[]), "empty grid"),
    (lambda e: e["candidates"][0].update(ranks=[4, 2, 8]), "ranks"),
])
def test_bad_times_and_empty_grids_are_refused_naming_the_layer(
        tmp_path, damage, match):
    prof = quick_profile(small()).to_dict()
    damage(prof["layers"]["c2"])
    with pytest.raises(ValueError, match=rf"layer c2: .*{match}"):
        Profile(prof)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))   # NaN/Infinity as Python writes them
    with pytest.raises(ValueError, match=rf"layer c2: .*{match}"):
        auto_decomposition(small(), profile=str(path))


def test_engine_refuses_a_rank_above_the_largest_naming_the_layer():
    prof = quick_profile(small()).to_dict()
    prof["layers"]["c3"]["candidates"][0]["ranks"][-1] = 33   # max is 32
    with pytest.raises(decompd.DecompValueError, match=r"c3.*ranks") as e:
        auto_decomposition(small(), profile=Profile(prof))
    assert e.value.code_name == "bad_profile"


def test_profile_of_another_type_is_refused():
    with pytest.raises(TypeError, match="profile must be"):
        auto_decomposition(small(), profile=42)


class TwoHeads(nn.Module):
    """Two Linear layers of the same weights and times, reading different
    halves of the input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.fa = nn.Linear(32, 32)
        self.fb = nn.Linear(32, 32)
        with torch.no_grad():
            self.fb.weight.copy_(self.fa.weight)

    def forward(self, x):
        return self.fa(x[:, :32]) + self.fb(x[:, 32:])


def test_with_a_calibration_the_latency_budget_spends_rank_on_output_energy(
        tmp_path):
    """The latency budget with a calibration weighs each layer's output
    energy per second saved: fa's inputs lie near a 4-dimensional subspace,
    so its outputs lose almost nothing at rank 4 and it is cut deep, while
    fb (inputs in every direction, the same weights and times) keeps more
    rank; without the calibration the two are alike."""
    model = TwoHeads()
    g = torch.Generator().manual_seed(6)
    basis = torch.randn(4, 32, generator=g)
    batches = []
    for _ in range(8):
        low = torch.randn(64, 4, generator=g) @ basis
        low += 1e-3 * torch.randn(64, 32, generator=g)
        batches.append(torch.cat([low, torch.randn(64, 32, generator=g)], 1))
    cal = decompd.calibrate(model, batches)
    curves = {n: ([1, 32], [1.0 / 32, 1.0]) for n in ("fa", "fb")}
    prof = synthetic(model, curves, {"fa": 1.0, "fb": 1.0})
    policy = {"name": "budget", "latency_reduction": 1.4,
              "types": ["Linear"], "max_layer_error": 1.0}
    ranks = {}
    for tag, c in (("calibrated", cal), ("plain", None)):
        info_path = tmp_path / f"{tag}.json"
        auto_decomposition(TwoHeads(), info_path, profile=prof,
                           calibration=c, policy=policy)
        info = read_info(info_path)
        ranks[tag] = {l["name"]: l["rank"] for l in info["layers"]}
        summary = info["summary"]
        assert summary["latency_before"] / summary["latency_after"] >= 1.4
    cal_r, plain_r = ranks["calibrated"], ranks["plain"]
    print(ranks)
    # fa alone carries the cut (its output barely notices); fb keeps all
    assert "fa" in cal_r and cal_r.get("fb", 32) > cal_r["fa"] + 8, cal_r
    assert abs(plain_r.get("fa", 32) - plain_r.get("fb", 32)) <= 1, plain_r
