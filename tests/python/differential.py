"""The differential campaign: decompctl against numpy's float64 SVD.

Kernels (convs and Linear layers) with the structures real checkpoints have
(zero taps, pruned channels, duplicated filters, exact low rank, zero and
identity-like kernels, tiny, huge and subnormal scales, fp16/bf16 extremes,
trained-like spectra) are crossed with groups, orders, dtypes, compute
precisions, output formats, every rank policy, the methods (spatial_svd,
channel_svd, svd) and calibrations (whitened decomposition), at sizes that
send the engine down each of its SVD paths (gesdd for small matrices; the
Gram-matrix spectrum, the block Krylov truncated SVD and its exact fallback
for large ones; float64).

Each case writes a model with `torch.save`, runs the real `decompctl
decompose` on it, reads the written factors back (torch.load, or an
independent safetensors reader here), rebuilds each layer's effective kernel
in float64 and checks, from those factors and not from the info file:

- the kernel's relative error is within 1.01 of numpy's float64
  Eckart–Young optimum for the method's reshape (plus what storing the
  factors in an fp16/bf16/float32 file and computing in float32 can cost,
  bounded from numpy's singular values, never from the engine's figures);
  with a calibration, the output error ‖Sᵀ(M − M̃)‖ is within 1.01 of the
  whitened optimum and never worse than plain SVD's at the same rank;
- the info file's relative_error and energy_retained equal the measured
  ones;
- the policy's own promise (max_error, energy) holds on the measured error;
- a layer left alone is passed through bit for bit.

Cases are drawn from a seed, so a failure names the seed and case index that
reproduce it. Run for a bounded time from the test suite
(tests/python/test_differential.py), or for hours:

    /usr/bin/python3 tests/python/differential.py --seconds 14400 \
        --decompctl build-test/src/cli/decompctl [--seed N]
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

UNIT = {"F32": 2.0 ** -24, "F16": 2.0 ** -11, "BF16": 2.0 ** -8,
        "F64": 2.0 ** -53}
TORCH_DTYPE = {"F32": torch.float32, "F16": torch.float16,
               "BF16": torch.bfloat16, "F64": torch.float64}

# --- kernels ---------------------------------------------------------------


def _to_kernel(M, O, I, kh, kw):
    """The kernel block [O, I, kh, kw] whose vertical-first reshape
    M[(i,h),(o,w)] is M."""
    return M.reshape(I, kh, O, kw).transpose(2, 0, 1, 3)


def _spectrum_matrix(rng, m, n, s):
    """An m×n matrix with singular values s (random orthonormal sides)."""
    k = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (U * s) @ V.T


KINDS = ["trained", "random", "centre_only", "one_row", "one_col",
         "padded5", "pruned_in", "pruned_out", "duplicated", "exact_rank",
         "zero", "identity", "tiny", "huge", "subnormal", "fp16_max",
         "fp16_tiny", "bf16_max", "bf16_tiny"]


def make_kernel(rng, kind, cout, cin, kh, kw, groups):
    """A float64 kernel [cout, cin/groups, kh, kw] of the given kind, and
    the dtype it is stored in (some kinds only make sense in one)."""
    I, O = cin // groups, cout // groups
    shape = (cout, I, kh, kw)
    dtype = None
    if kind in ("trained", "tiny", "huge", "subnormal", "fp16_max",
                "fp16_tiny", "bf16_max", "bf16_tiny", "exact_rank"):
        blocks = []
        for _ in range(groups):
            m, n = I * kh, O * kw
            k = min(m, n)
            if kind == "exact_rank":
                # rank 1 to k-1 (a 1-wide reshape can only be rank 1)
                r = int(rng.integers(1, k)) if k > 1 else 1
                s = np.zeros(k)
                s[:r] = rng.uniform(0.5, 2.0, r)
            else:  # a power law over a noise floor, as trained layers have
                knee = rng.uniform(0.01, 0.3) * k
                s = 1.0 / (1.0 + np.arange(k) / knee) ** rng.uniform(0.5, 2)
                s += rng.uniform(0, 0.05)
            blocks.append(_to_kernel(_spectrum_matrix(rng, m, n, s), O, I,
                                     kh, kw))
        W = np.concatenate(blocks, axis=0)
        W /= np.abs(W).max()
        if kind == "tiny":
            W *= 1e-25
        elif kind == "huge":
            W *= 1e30
        elif kind == "subnormal":  # float32 subnormals (below 1.18e-38)
            W *= 1e-40
            dtype = "F32"
        elif kind == "fp16_max":
            W *= 60000.0
            dtype = "F16"
        elif kind == "fp16_tiny":  # down into fp16's subnormals
            W *= 1e-4
            dtype = "F16"
        elif kind == "bf16_max":
            W *= 1e38
            dtype = "BF16"
        elif kind == "bf16_tiny":
            W *= 1e-36
            dtype = "BF16"
        if kind in ("tiny", "huge"):
            dtype = rng.choice(["F32", "F64"])
        return W, dtype
    W = rng.standard_normal(shape) * 0.05
    if kind == "centre_only":  # a 1x1 conv stored as kh×kw
        keep = np.zeros((kh, kw))
        keep[kh // 2, kw // 2] = 1
        W *= keep
    elif kind == "one_row":
        W[:, :, [h for h in range(kh) if h != kh // 2], :] = 0
    elif kind == "one_col":
        W[:, :, :, [w for w in range(kw) if w != kw // 2]] = 0
    elif kind == "padded5":  # a 3x3 kernel padded into a 5x5 one
        keep = np.zeros((kh, kw))
        keep[1:kh - 1, 1:kw - 1] = 1
        W *= keep
    elif kind == "pruned_in":
        W[:, rng.random(I) < rng.uniform(0.2, 0.9)] = 0
    elif kind == "pruned_out":
        W[rng.random(cout) < rng.uniform(0.2, 0.9)] = 0
    elif kind == "duplicated":
        distinct = int(rng.integers(1, max(2, cout // 3)))
        W = W[rng.integers(0, distinct, cout)]
    elif kind == "zero":
        W = np.zeros(shape)
    elif kind == "identity":
        W = np.zeros(shape)
        for o in range(cout):
            W[o, o % I, kh // 2, kw // 2] = 1.0
    return W, dtype


# --- reading what decompctl wrote ------------------------------------------


def read_safetensors(path):
    """{name: float64 numpy} from a safetensors file, read here (JSON header
    and numpy.frombuffer), not by the engine or a library."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        raw = data[base + lo:base + hi]
        dt = e["dtype"]
        if dt == "BF16":
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            a = bits.view(np.float32)
        else:
            a = np.frombuffer(raw, {"F32": "<f4", "F16": "<f2",
                                    "F64": "<f8", "I64": "<i8"}[dt])
        out[name] = a.astype(np.float64).reshape(e["shape"])
    return out


def read_pth(path):
    sd = torch.load(path, weights_only=True)
    return {k: v.double().numpy() for k, v in sd.items()}


# --- one case --------------------------------------------------------------


def reshape_groups(W, groups, method, vertical):
    """The per-group matrices the method factors, rows on the input side:
    spatial M[(i,h),(o,w)] (vertical-first) or M[(i,w),(o,h)]; channel
    M[(i,h,w), o]; a Linear's Wᵀ."""
    if W.ndim == 2:
        return [W.T]
    cout, I, kh, kw = W.shape
    O = cout // groups
    Ms = []
    for j in range(groups):
        B = W[j * O:(j + 1) * O]
        if method == "channel_svd":
            Ms.append(B.reshape(O, I * kh * kw).T)
        elif vertical:
            Ms.append(B.transpose(1, 2, 0, 3).reshape(I * kh, O * kw))
        else:
            Ms.append(B.transpose(1, 3, 0, 2).reshape(I * kw, O * kh))
    return Ms


def effective(first, second, groups, method, vertical):
    """The kernel ([cout, I, kh, kw], or a Linear's [out, in]) the two
    written modules compute."""
    if first.ndim == 2:
        return second @ first
    cout, R = second.shape[:2]
    O = cout // groups
    parts = []
    for j in range(groups):
        f = first[j * R:(j + 1) * R]
        s = second[j * O:(j + 1) * O]
        if method == "channel_svd":  # f [R, I, kh, kw], s [O, R, 1, 1]
            parts.append(np.einsum("or,rihw->oihw", s[:, :, 0, 0], f))
        elif vertical:  # f [R, I, kh, 1], s [O, R, 1, kw]
            parts.append(np.einsum("orw,rih->oihw", s[:, :, 0, :],
                                   f[:, :, :, 0]))
        else:  # f [R, I, 1, kw], s [O, R, kh, 1]
            parts.append(np.einsum("orh,riw->oihw", s[:, :, :, 0],
                                   f[:, :, 0, :]))
    return np.concatenate(parts, axis=0)



def draw_case(seed, index, large=None):
    """The case `index` of campaign `seed`: a model of 1-4 conv layers and a
    policy, as plain data."""
    rng = np.random.default_rng([seed, index])
    if large is None:
        large = rng.random() < 0.3
    layers = []
    for x in range(int(rng.integers(1, 4 if large else 5))):
        kind = str(rng.choice(KINDS))
        if kind == "padded5":
            kh = kw = 5
        else:
            kh, kw = [(3, 3), (3, 3), (5, 5), (3, 5), (5, 3), (7, 7)][
                int(rng.integers(0, 6))]
        if large:
            groups = int(rng.choice([1, 1, 2]))
            per = int(rng.integers(176, 400)) if kh * kw <= 15 else \
                int(rng.integers(110, 200))
            cin = cout = per * groups
            if rng.random() < 0.3:
                cout = int(rng.integers(176, 400)) * groups
        else:
            groups = int(rng.choice([1, 1, 1, 2, 4]))
            cin = int(rng.integers(1, 24)) * groups * int(rng.choice([1, 4]))
            cout = int(rng.integers(1, 24)) * groups * int(rng.choice([1, 4]))
        layer = {"name": f"l{x}", "kind": kind, "cin": cin,
                 "cout": cout, "kh": kh, "kw": kw, "groups": groups,
                 "dtype": str(rng.choice(["F32", "F32", "F32", "F16",
                                          "BF16", "F64"])),
                 "seed": int(rng.integers(0, 2 ** 31))}
        if rng.random() < 0.3:  # a Linear: out × in
            layer.update(type="Linear", kh=1, kw=1, groups=1,
                         kind=kind if kind != "padded5" else "trained")
            if large:
                layer["cin"] = int(rng.integers(520, 1400))
                layer["cout"] = int(rng.integers(520, 1400))
        layers.append(layer)
    pname = str(rng.choice(["fixed", "ratio", "energy", "max_error", "vbmf",
                            "amct", "budget"]))
    policy = {"name": pname}
    if pname == "fixed":
        policy["rank"] = int(rng.integers(1, 400 if large else 80))
    elif pname == "ratio":
        policy["ratio"] = float(round(rng.uniform(0.02, 0.95), 3))
    elif pname == "energy":
        policy["energy"] = float(round(rng.uniform(0.5, 0.999), 4))
    elif pname == "max_error":
        policy["max_error"] = float(round(rng.uniform(0.005, 0.6), 4))
    elif pname == "budget":
        if rng.random() < 0.5:
            policy["macs_reduction"] = float(round(rng.uniform(1.2, 5), 2))
        else:
            policy["params_reduction"] = float(round(rng.uniform(1.2, 5), 2))
    if pname in ("fixed", "ratio") and rng.random() < 0.5:
        policy["require_cheaper"] = False
    if rng.random() < 0.4:
        policy["order"] = str(rng.choice(["vertical_first",
                                          "horizontal_first"]))
    if rng.random() < 0.25:
        policy["compute"] = "float64"
    if pname != "amct":
        if any(L.get("type") == "Linear" for L in layers) and \
                rng.random() < 0.8:
            policy["types"] = ["Conv2d", "Linear"]
        r = rng.random()
        if r < 0.2:
            policy["methods"] = ["spatial"]
        elif r < 0.4:
            policy["methods"] = ["channel"]
        calibrate = rng.random() < 0.35
        for L in layers:  # a calibration for some of the layers
            n = L["cin"] // L["groups"] * L["kh"] * L["kw"]
            L["calibrated"] = bool(calibrate and rng.random() < 0.7 and
                                   L["kind"] != "zero" and n <= 1400)
    fmt = str(rng.choice(["pth", "safetensors"]))
    return {"seed": seed, "index": index, "layers": layers, "policy": policy,
            "format": fmt}


class CaseFailure(AssertionError):
    pass


def make_gram(rng, n):
    """A Gram matrix XᵀX of correlated inputs (decaying scales, as real
    activations have), full rank: more samples than dimensions."""
    scales = 1.0 / (1.0 + np.arange(n) / max(1.0, rng.uniform(0.02, 0.5) * n))
    mix = rng.standard_normal((n, n)) * scales
    X = rng.standard_normal((2 * n + 16, n)) @ mix.T
    return X.T @ X


def write_calibration(path, grams):
    """A decompd.calibration safetensors file, written here: {layer name:
    [g, n, n] or [n, n] float64}."""
    layers, tensors = {}, {}
    for name, G in grams.items():
        layers[name] = {"gram": name, "type": "Linear" if G.ndim == 2
                        else "Conv2d", "shape": list(G.shape)}
        tensors[name + ".gram"] = np.ascontiguousarray(G, dtype="<f8")
        tensors[name + ".count"] = np.array(2 * G.shape[-1] + 16, "<i8")
    header = {"__metadata__": {"format": "decompd.calibration",
                               "version": "1", "layers": json.dumps(layers)}}
    blobs, off = [], 0
    for k, a in tensors.items():
        b = a.tobytes()
        header[k] = {"dtype": "F64" if a.dtype.kind == "f" else "I64",
                     "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def run_case(case, decompctl, workdir, stats):
    """Build, decompose and check one case; raises CaseFailure naming the
    case and layer. Adds to `stats` what ran."""
    tag = f"seed {case['seed']} case {case['index']}"
    sd, spec, kernels, grams = {}, [], {}, {}
    for L in case["layers"]:
        rng = np.random.default_rng(L["seed"])
        linear = L.get("type") == "Linear"
        W, forced = make_kernel(rng, L["kind"], L["cout"], L["cin"],
                                L["kh"], L["kw"], L["groups"])
        if linear:
            W = W[:, :, 0, 0]
        dt = forced or L["dtype"]
        L["stored"] = dt
        t = torch.from_numpy(np.ascontiguousarray(W)).to(TORCH_DTYPE[dt])
        sd[L["name"] + ".weight"] = t
        kernels[L["name"]] = t.double().numpy()  # what the file holds
        if linear:
            spec.append({"name": L["name"], "type": "Linear",
                         "in_features": L["cin"], "out_features": L["cout"],
                         "bias": False})
        else:
            spec.append({"name": L["name"], "type": "Conv2d",
                         "in_channels": L["cin"], "out_channels": L["cout"],
                         "kernel_size": [L["kh"], L["kw"]], "stride": [1, 1],
                         "padding": [L["kh"] // 2, L["kw"] // 2],
                         "dilation": [1, 1], "groups": L["groups"],
                         "bias": False, "padding_mode": "zeros"})
        if L.get("calibrated"):
            n = L["cin"] // L["groups"] * L["kh"] * L["kw"]
            G = np.stack([make_gram(rng, n) for _ in range(L["groups"])])
            grams[L["name"]] = G[0] if linear else G
    d = tempfile.mkdtemp(dir=workdir)
    try:
        torch.save(sd, os.path.join(d, "in.pth"))
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump({"layers": spec}, f)
        out = os.path.join(d, "out")
        extra = []
        if grams:
            write_calibration(os.path.join(d, "cal.safetensors"), grams)
            extra = ["--calibration", os.path.join(d, "cal.safetensors")]
        p = subprocess.run(
            [decompctl, "decompose", "--weights", os.path.join(d, "in.pth"),
             "--spec", os.path.join(d, "spec.json"), "--out", out,
             "--policy", json.dumps(case["policy"]), "--format",
             case["format"], "--verbose", "--quiet", *extra],
            capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise CaseFailure(f"{tag}: decompctl exit {p.returncode}: "
                              f"{p.stderr.strip()[-400:]}")
        log = p.stderr
        for m in re.finditer(r"method=(krylov|gesdd|eig)", log):
            stats[m.group(1)] = stats.get(m.group(1), 0) + 1
        stats["gram"] = stats.get("gram", 0) + log.count("method=gram")
        stats["fallback"] = stats.get("fallback", 0) + len(
            re.findall(r'fallback="[^"]', log))
        stats["warnings"] = stats.get("warnings", 0) + log.count(
            "level=warn")
        stats["deflated"] = stats.get("deflated", 0) + len(
            re.findall(r"deflated=[1-9]", log))
        if case["policy"].get("compute") == "float64":
            stats["float64"] = stats.get("float64", 0) + 1
        with open(os.path.join(out, "decompose_info.json")) as f:
            info = json.load(f)
        wpath = os.path.join(out, "decomposed_weights." + case["format"])
        got = read_pth(wpath) if case["format"] == "pth" else \
            read_safetensors(wpath)
        done = {l["name"]: l for l in info["layers"]}
        for L in case["layers"]:
            name = L["name"]
            W = kernels[name]
            if name not in done:
                if not np.array_equal(got[name + ".weight"], W):
                    raise CaseFailure(f"{tag}: {name} left alone but its "
                                      "weight changed")
                stats["skipped"] = stats.get("skipped", 0) + 1
                continue
            G = grams.get(name)
            if G is not None and G.ndim == 2:
                G = G[None]
            whitened = G is not None and (
                done[name]["method"] != "spatial_svd")
            check_layer(tag, case, L, W, done[name], got, stats,
                        G if whitened else None)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def check_layer(tag, case, L, W, entry, got, stats, gram=None):
    name, g = L["name"], L["groups"]
    first, second = got[name + ".0.weight"], got[name + ".1.weight"]
    method = entry["method"]
    vertical = method != "spatial_svd" or first.shape[3] == 1
    R = entry["rank"]
    where = (f"{tag}: {name} ({L['kind']}, {L['stored']}, "
             f"{L.get('type', 'Conv2d')} {L['cout']}x{L['cin']}/{g}"
             f"x{L['kh']}x{L['kw']}, {method} rank {R}"
             f"{', whitened' if gram is not None else ''}, "
             f"policy {json.dumps(case['policy'])})")
    if (gram is not None) != ("output_relative_error" in entry["stats"]):
        raise CaseFailure(f"{where}: whitened in the info file: "
                          f"{'output_relative_error' in entry['stats']}")
    stats[method] = stats.get(method, 0) + 1
    norm = math.sqrt(float((W * W).sum()))
    diff = W - effective(first, second, g, method, vertical)
    err_abs = math.sqrt(float((diff * diff).sum()))
    comp = "F64" if (case["policy"].get("compute") == "float64"
                     or L["stored"] == "F64") else "F32"
    Ms = reshape_groups(W, g, method, vertical)
    Ds = reshape_groups(diff, g, method, vertical)
    k = max(min(M.shape) for M in Ms)
    if gram is not None:
        check_whitened(where, case, L, entry, Ms, Ds, gram, R, comp, stats)
    else:
        tail2, top_sum = 0.0, 0.0
        for M in Ms:
            s = np.linalg.svd(M, compute_uv=False)
            tail2 += float((s[R:] ** 2).sum())
            # How far storing the factors (√σ·u, √σ·v) may move the product.
            top_sum += (2 * UNIT[L["stored"]]) ** 2 * float(s[0] * s[:R].sum())
        opt_abs = math.sqrt(tail2)
        slack = math.sqrt(top_sum) + 64 * UNIT[comp] * math.sqrt(k) * norm
        if err_abs > 1.01 * opt_abs + slack:
            raise CaseFailure(
                f"{where}: error {err_abs / norm if norm else err_abs:.6g} "
                f"vs optimum {opt_abs / norm if norm else 0:.6g}")
        stats["worst_ratio"] = max(stats.get("worst_ratio", 0),
                                   err_abs / (opt_abs + slack)
                                   if opt_abs + slack > 0 else 0)
        check_promise(where, case["policy"], err_abs / norm if norm else 0,
                      slack / norm if norm > 0 else 0.0)
    measured = err_abs / norm if norm > 0 else 0.0
    st = entry["stats"]
    info_tol = 2e-4 * measured + 16 * UNIT[comp] * math.sqrt(R) + 1e-9
    if abs(st["relative_error"] - measured) > info_tol:
        raise CaseFailure(f"{where}: info relative_error "
                          f"{st['relative_error']:.10g}, measured "
                          f"{measured:.10g}")
    kept = 1.0 - measured * measured
    if abs(st["energy_retained"] - kept) > 2 * measured * info_tol + 1e-9:
        raise CaseFailure(f"{where}: info energy_retained "
                          f"{st['energy_retained']:.10g}, measured "
                          f"{kept:.10g}")
    pol = case["policy"]
    if pol["name"] == "fixed" and R != min(pol["rank"], k):
        raise CaseFailure(f"{where}: rank {R}, asked {pol['rank']}")
    stats["layers"] = stats.get("layers", 0) + 1


def check_promise(where, pol, err, rel_slack):
    """The policy's own promise on the error it works on (the weights', or
    with a calibration the outputs')."""
    kept = 1.0 - err * err
    if pol["name"] == "max_error" and err > 1.01 * pol["max_error"] + rel_slack:
        raise CaseFailure(f"{where}: error {err:.6g} over the bound")
    if pol["name"] == "energy" and \
            kept < pol["energy"] - 0.021 * (1 - pol["energy"]) - 2 * rel_slack:
        raise CaseFailure(f"{where}: energy {kept:.6g} under the target")


def check_whitened(where, case, L, entry, Ms, Ds, grams, R, comp, stats):
    """With a Gram G = S·Sᵀ per group: the output error ‖Sᵀ·(M − M̃)‖ is
    within 1.01 of numpy's whitened optimum (the tail of the singular values
    of Sᵀ·M), never worse than plain SVD's at the same rank, and the info
    file's output_relative_error is the measured one."""
    out2 = tot2 = tail2 = plain2 = 0.0
    for M, D, G in zip(Ms, Ds, grams):
        S = np.linalg.cholesky(G)
        Mw = S.T @ M
        out2 += float(np.sum((S.T @ D) ** 2))
        sw = np.linalg.svd(Mw, compute_uv=False)
        tot2 += float((sw ** 2).sum())
        tail2 += float((sw[R:] ** 2).sum())
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        P = (u[:, :R] * s[:R]) @ vt[:R]
        plain2 += float(np.sum((S.T @ (M - P)) ** 2))
    if tot2 == 0:
        return
    out, opt, plain = (math.sqrt(x / tot2) for x in (out2, tail2, plain2))
    k = max(min(M.shape) for M in Ms)
    # Storing the factors and float32 arithmetic through S⁻ᵀ: relative
    # slack from the stored dtype and the compute precision, times the
    # whitening's condition (√ of the Gram's).
    cond = 1.0
    for G in grams:
        ev = np.linalg.eigvalsh(G)
        cond = max(cond, math.sqrt(ev[-1] / max(ev[0], ev[-1] * 1e-16)))
    slack = (8 * UNIT[L["stored"]] + 64 * UNIT[comp] * math.sqrt(k)) * \
        min(cond, 1e4)
    if out > 1.01 * opt + slack:
        raise CaseFailure(f"{where}: output error {out:.6g} vs whitened "
                          f"optimum {opt:.6g}")
    if out > plain * 1.0001 + slack:
        raise CaseFailure(f"{where}: output error {out:.6g} worse than plain "
                          f"SVD's {plain:.6g}")
    got = entry["stats"]["output_relative_error"]
    if abs(got - out) > 2e-3 * out + slack:
        raise CaseFailure(f"{where}: info output_relative_error {got:.10g}, "
                          f"measured {out:.10g}")
    check_promise(where, case["policy"], out, slack)
    stats["whitened"] = stats.get("whitened", 0) + 1
    stats["worst_whitened_ratio"] = max(stats.get("worst_whitened_ratio", 0),
                                        out / (opt + slack))


# The cases every bounded run starts with, so each path runs whatever the
# time: index, large, and what they pin down.
COVERAGE = [
    # the reported bug: a centre-only 256→256 3x3 at ratio 0.25 (Krylov)
    {"layers": [{"name": "c", "kind": "centre_only", "cin": 256,
                 "cout": 256, "kh": 3, "kw": 3, "groups": 1, "dtype": "F32",
                 "seed": 0}],
     "policy": {"name": "ratio", "ratio": 0.25}, "format": "pth"},
    # Gram spectrum + Krylov with a known optimum, rank-deficient
    {"layers": [{"name": "c", "kind": "centre_only", "cin": 192,
                 "cout": 192, "kh": 3, "kw": 3, "groups": 1, "dtype": "F32",
                 "seed": 1},
                {"name": "d", "kind": "trained", "cin": 256, "cout": 256,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F16", "seed": 2}],
     "policy": {"name": "budget"}, "format": "safetensors"},
    # a rank above 0.4k on a large matrix: the float64 Gram eigenpairs
    # (float32 compute; a rank-deficient matrix falls back to gesdd)
    {"layers": [{"name": "c", "kind": "pruned_in", "cin": 200, "cout": 200,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "BF16",
                 "seed": 3}],
     "policy": {"name": "ratio", "ratio": 0.7, "require_cheaper": False,
                "methods": ["spatial"]},
     "format": "pth"},
    {"layers": [{"name": "c", "kind": "trained", "cin": 200, "cout": 200,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32",
                 "seed": 3}],
     "policy": {"name": "ratio", "ratio": 0.7, "require_cheaper": False,
                "methods": ["spatial"]},
     "format": "pth"},
    # float64 compute on large and small, huge and subnormal scales
    {"layers": [{"name": "c", "kind": "huge", "cin": 256, "cout": 256,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32", "seed": 4},
                {"name": "d", "kind": "subnormal", "cin": 32, "cout": 48,
                 "kh": 3, "kw": 3, "groups": 2, "dtype": "F32", "seed": 5}],
     "policy": {"name": "energy", "energy": 0.9, "compute": "float64"},
     "format": "pth"},
    {"layers": [{"name": "c", "kind": "huge", "cin": 256, "cout": 256,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32", "seed": 6},
                {"name": "d", "kind": "tiny", "cin": 256, "cout": 256,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32", "seed": 7}],
     "policy": {"name": "max_error", "max_error": 0.3}, "format": "pth"},
    # float64 weights through the Krylov path
    {"layers": [{"name": "c", "kind": "exact_rank", "cin": 240, "cout": 240,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F64", "seed": 8}],
     "policy": {"name": "fixed", "rank": 150}, "format": "safetensors"},
    # the reference's preset and vbmf on small grouped layers
    {"layers": [{"name": "c", "kind": "trained", "cin": 64, "cout": 96,
                 "kh": 5, "kw": 5, "groups": 1, "dtype": "F32", "seed": 9},
                {"name": "d", "kind": "identity", "cin": 64, "cout": 64,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32",
                 "seed": 10}],
     "policy": {"name": "amct"}, "format": "pth"},
    # channel_svd and Linear svd, whitened by a calibration, both paths
    {"layers": [{"name": "lin", "type": "Linear", "kind": "trained",
                 "cin": 800, "cout": 600, "kh": 1, "kw": 1, "groups": 1,
                 "dtype": "F32", "seed": 13, "calibrated": True},
                {"name": "pw", "kind": "pruned_in", "cin": 64, "cout": 96,
                 "kh": 1, "kw": 1, "groups": 2, "dtype": "F16", "seed": 14,
                 "calibrated": True},
                {"name": "c", "kind": "centre_only", "cin": 64, "cout": 64,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32", "seed": 15,
                 "calibrated": True}],
     "policy": {"name": "fixed", "rank": 120, "types": ["Conv2d", "Linear"],
                "require_cheaper": False}, "format": "safetensors"},
    {"layers": [{"name": "lin", "type": "Linear", "kind": "exact_rank",
                 "cin": 700, "cout": 560, "kh": 1, "kw": 1, "groups": 1,
                 "dtype": "F32", "seed": 16},
                {"name": "c", "kind": "trained", "cin": 96, "cout": 96,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "BF16", "seed": 17,
                 "calibrated": True}],
     "policy": {"name": "budget", "types": ["Conv2d", "Linear"]},
     "format": "pth"},
    {"layers": [{"name": "c", "kind": "duplicated", "cin": 48, "cout": 96,
                 "kh": 3, "kw": 5, "groups": 4, "dtype": "F16", "seed": 11},
                {"name": "d", "kind": "zero", "cin": 16, "cout": 16,
                 "kh": 3, "kw": 3, "groups": 1, "dtype": "F32", "seed": 12}],
     "policy": {"name": "vbmf", "order": "horizontal_first"},
     "format": "safetensors"},
]


def campaign(decompctl, seconds, seed, log=print, coverage=True,
             keep_going=False):
    """Run cases until `seconds` have passed; returns the stats. Raises
    CaseFailure on the first wrong case, or with `keep_going` logs each and
    counts them in stats["failed"]."""
    stats = {"cases": 0, "failed": 0}
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="decompd-diff-")
    try:
        cases = []
        if coverage:
            for i, c in enumerate(COVERAGE):
                cases.append(dict(c, seed=-1, index=i))
        index = 0
        while True:
            if cases:
                case = cases.pop(0)
            else:
                if time.monotonic() - start > seconds:
                    break
                case = draw_case(seed, index)
                index += 1
            try:
                run_case(case, decompctl, workdir, stats)
            except CaseFailure as e:
                if not keep_going:
                    raise
                stats["failed"] += 1
                log(f"FAILED {e}")
            stats["cases"] += 1
            if stats["cases"] % 50 == 0:
                log(f"{stats['cases']} cases, {time.monotonic() - start:.0f}"
                    f" s: {stats}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stats["seconds"] = round(time.monotonic() - start, 1)
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--decompctl", default=os.path.join(
        os.environ.get("DECOMPD_BUILD_DIR", "build-test"), "src", "cli",
        "decompctl"))
    ap.add_argument("--case", type=int, help="run only this case index")
    ap.add_argument("--keep-going", action="store_true",
                    help="log each failing case and go on")
    a = ap.parse_args()
    if a.case is not None:
        stats = {}
        run_case(draw_case(a.seed, a.case), a.decompctl, tempfile.gettempdir(),
                 stats)
        print(f"seed {a.seed} case {a.case}: ok {stats}")
        return
    print(f"seed {a.seed}, {a.seconds:.0f} s", flush=True)
    stats = campaign(a.decompctl, a.seconds, a.seed,
                     log=lambda s: print(s, flush=True),
                     keep_going=a.keep_going)
    print(f"{'clean' if not stats['failed'] else 'FAILED'}: {stats}")
    return 1 if stats["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
