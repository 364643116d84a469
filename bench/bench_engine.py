#!/usr/bin/python3
"""bench_engine.py — decompd's engine against PyTorch, side by side.

One run times, on the same matrices and with the same number of cores:
  - decompd's engine (libdecomp through ctypes, `threads` = cores), each
    case in a child process so that its peak RSS is its own;
  - torch.linalg.svd (float32, full thin SVD) and torch.svd_lowrank (rank-R
    sketch, niter=2) where a fixed rank applies;
on the reference tool's layer shapes at 2x and 4x MAC reduction (a fixed
rank each; a synthesized trained-like spectrum: random orthogonal factors x
a power-law decay over a noise floor), the amct preset's rank on
(2048,2048,5,5), and whole torchvision resnet50 / vgg16 state dicts at the
default policy (budget). It prints time ratios, each method's error over the
optimal (Eckart-Young) error, peak RSS, and how far each time is from the
GEMM bound (the machine's sgemm GFLOP/s, measured in the same run, against
the fewest flops each method needs).

    /usr/bin/python3 bench/bench_engine.py            # everything (long)
    /usr/bin/python3 bench/bench_engine.py --quick    # two shapes + resnet50
    /usr/bin/python3 bench/bench_engine.py --cases 1024x3:2,amct,resnet50

Needs a build (meson) of libdecomp: --lib, $DECOMPD_LIBRARY, or
build*/src/core/libdecomp.so next to this folder. Inputs are synthesized
once with fixed seeds and cached in --cache (default /tmp/decompd-bench).
"""
import argparse
import ctypes
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SHAPES = [(512, 5), (1024, 3), (1024, 5), (2048, 3), (2048, 5)]
QUICK = ["512x5:2", "512x5:4", "1024x3:2", "1024x3:4", "resnet50"]


# --- the engine through ctypes (child side) -----------------------------------

class Tensor(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int),
                ("ndim", ctypes.c_int), ("shape", ctypes.c_int64 * 8),
                ("stride", ctypes.c_int64 * 8), ("offset", ctypes.c_int64),
                ("data", ctypes.c_void_p), ("storage", ctypes.c_void_p),
                ("storage_nbytes", ctypes.c_size_t)]


LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int,
                          ctypes.c_char_p, ctypes.c_char_p)


class Options(ctypes.Structure):
    _fields_ = [("progress", ctypes.c_void_p), ("progress_user", ctypes.c_void_p),
                ("source_digest", ctypes.c_char_p),
                ("source_format", ctypes.c_char_p),
                ("record_spectra", ctypes.c_bool), ("threads", ctypes.c_int),
                # every field of include/decomp/decomp.h's decomp_options: the
                # engine reads them all
                ("calibration", ctypes.c_void_p),
                ("calibration_digest", ctypes.c_char_p),
                ("profile", ctypes.c_char_p),
                ("profile_digest", ctypes.c_char_p)]


def find_lib(arg):
    if arg:
        return arg
    if os.environ.get("DECOMPD_LIBRARY"):
        return os.environ["DECOMPD_LIBRARY"]
    for d in ["build-perf", "build", "build-engine"] + sorted(
            glob.glob(os.path.join(ROOT, "build*"))):
        p = os.path.join(ROOT, d, "src", "core", "libdecomp.so")
        if os.path.exists(p):
            return p
    sys.exit("bench: no libdecomp.so found; build first or pass --lib")


def load(path):
    lib = ctypes.CDLL(path)
    P, PP = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    for name, res, args in [
            ("decomp_ctx_new", P, []),
            ("decomp_ctx_set_log", None, [P, LOG_FN, P, ctypes.c_int]),
            ("decomp_errmsg", ctypes.c_char_p, [P]),
            ("decomp_weights_new", ctypes.c_int, [P, PP]),
            ("decomp_weights_open", ctypes.c_int, [P, ctypes.c_char_p, PP]),
            ("decomp_weights_add", ctypes.c_int, [P, ctypes.POINTER(Tensor)]),
            ("decomp_weights_find", ctypes.POINTER(Tensor), [P, ctypes.c_char_p]),
            ("decomp_spec_parse", ctypes.c_int,
             [P, ctypes.c_char_p, ctypes.c_size_t, PP]),
            ("decomp_policy_parse", ctypes.c_int, [P, ctypes.c_char_p, PP]),
            ("decomp_decompose", ctypes.c_int,
             [P, P, P, P, ctypes.POINTER(Options), PP]),
            ("decomp_result_weights", P, [P]),
            ("decomp_result_info", ctypes.c_char_p, [P])]:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


def vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(args):
    """Run the engine once; print one JSON line."""
    lib = load(args.lib)
    ctx = lib.decomp_ctx_new()
    logs = []
    logfn = LOG_FN(lambda u, lvl, topic, msg: logs.append(msg.decode()))
    lib.decomp_ctx_set_log(ctx, logfn, None, 3 if os.environ.get("BENCH_DEBUG") else 2)
    w = ctypes.c_void_p()
    keep = None
    if args.weights.endswith(".npy"):
        W = np.load(args.weights, mmap_mode="r")
        keep = W
        rc = lib.decomp_weights_new(ctx, ctypes.byref(w))
        t = Tensor(name=b"c.weight", dtype=0, ndim=4,
                   data=W.ctypes.data)
        for i in range(4):
            t.shape[i] = W.shape[i]
            t.stride[i] = W.strides[i] // 4
        rc = rc or lib.decomp_weights_add(w, ctypes.byref(t))
    else:
        rc = lib.decomp_weights_open(ctx, args.weights.encode(), ctypes.byref(w))
    spec_text = open(args.spec, "rb").read()
    spec, pol, res = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    rc = rc or lib.decomp_spec_parse(ctx, spec_text, len(spec_text),
                                     ctypes.byref(spec))
    rc = rc or lib.decomp_policy_parse(ctx, args.policy.encode(), ctypes.byref(pol))
    if rc:
        sys.exit("engine: " + lib.decomp_errmsg(ctx).decode())
    opts = Options(threads=args.threads)
    base = vm("VmRSS")
    t0 = time.perf_counter()
    rc = lib.decomp_decompose(ctx, w, spec, pol, ctypes.byref(opts),
                              ctypes.byref(res))
    secs = time.perf_counter() - t0
    peak = vm("VmHWM")
    if rc:
        sys.exit("engine: " + lib.decomp_errmsg(ctx).decode())
    info = json.loads(lib.decomp_result_info(res).decode())
    out = {"seconds": secs, "peak_rss": peak, "rss_before": base,
           "layers": [{"name": L["name"], "rank": L["rank"],
                       "max_rank": L.get("max_rank"),
                       "relative_error": L["stats"]["relative_error"]}
                      for L in info["layers"]],
           "log": [m for m in logs if "rank=" in m],
           "spectrum_log": [m for m in logs if "phase=spectrum" in m]}
    if keep is not None and info["layers"]:
        # Independent check of the single layer: ||M - F S^T|| / ||M||.
        rw = lib.decomp_result_weights(res)
        f = lib.decomp_weights_find(rw, b"c.0.weight").contents
        s = lib.decomp_weights_find(rw, b"c.1.weight").contents
        def arr(t):
            n = int(np.prod([t.shape[i] for i in range(4)]))
            a = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(
                ctypes.c_float)), shape=(n,))
            return a.reshape([t.shape[i] for i in range(4)])
        F, S = arr(f), arr(s)
        O, I, kh, kw = keep.shape
        R = F.shape[0]
        U = F.reshape(R, I * kh).T                            # (I*kh) x R
        V = S.reshape(O, R, kw).transpose(0, 2, 1).reshape(O * kw, R)
        M = np.asarray(keep).transpose(1, 2, 0, 3).reshape(I * kh, O * kw)
        err2, nrm2 = 0.0, 0.0
        for c0 in range(0, O * kw, 2048):
            blk = M[:, c0:c0 + 2048].astype(np.float64)
            d = blk - (U @ V[c0:c0 + 2048].T).astype(np.float64)
            err2 += float((d * d).sum())
            nrm2 += float((blk * blk).sum())
        out["measured_error"] = (err2 / nrm2) ** 0.5
    print(json.dumps(out))


# --- inputs (parent side) ------------------------------------------------------

def decay(k, seed):
    """A trained-like spectrum: a power law over a noise floor, descending."""
    i = np.arange(k, dtype=np.float64)
    return 1.0 / (1.0 + i / (0.02 * k)) + 0.03


def synth(torch, C, kk, cache):
    """W [C, C, kk, kk] whose matrix M (I*kh x O*kw) = Q1 diag(s) Q2^T."""
    path = os.path.join(cache, f"conv_{C}x{kk}.npy")
    k = C * kk
    s = decay(k, 0)
    if not os.path.exists(path):
        g = torch.Generator().manual_seed(C * 100 + kk)
        q1, _ = torch.linalg.qr(torch.randn(k, k, generator=g))
        q2, _ = torch.linalg.qr(torch.randn(k, k, generator=g))
        M = (q1 * torch.from_numpy(s).float()) @ q2.T
        del q1, q2
        W = M.reshape(C, kk, C, kk).permute(2, 0, 1, 3).contiguous().numpy()
        np.save(path + ".tmp.npy", W)
        os.replace(path + ".tmp.npy", path)
    return path, s


def matrix_of(W):
    O, I, kh, kw = W.shape
    return np.ascontiguousarray(W.transpose(1, 2, 0, 3).reshape(I * kh, O * kw))


def rank_for(C, kk, reduction):
    # MACs per pixel: before C*C*kk*kk, after R*(C*kk + C*kk).
    return int(C * C * kk * kk / (reduction * 2 * C * kk))


def spec_file(cache, layers):
    path = os.path.join(cache, "spec_%d.json" % (hash(json.dumps(layers)) & 0xffffffff))
    with open(path, "w") as f:
        json.dump({"layers": layers}, f)
    return path


def conv_spec(name, C, kk):
    return {"name": name, "type": "Conv2d", "in_channels": C,
            "out_channels": C, "kernel_size": [kk, kk], "stride": [1, 1],
            "padding": [kk // 2, kk // 2], "dilation": [1, 1], "groups": 1,
            "bias": False, "padding_mode": "zeros"}


def run_engine(args, weights, spec, policy):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--lib",
           args.lib, "--weights", weights, "--spec", spec, "--policy", policy,
           "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


TORCH_SVD = {}


def best_of(args, weights, spec, policy):
    """The engine --repeat times (each in a fresh child); the fastest run,
    with the largest peak RSS seen."""
    runs = [run_engine(args, weights, spec, policy) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    best["runs"] = [r["seconds"] for r in runs]
    return best


def gemm_gflops(torch):
    """The machine's sgemm, through the same OpenBLAS the engine links."""
    a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((4096, 1024), dtype=np.float32)
    a @ b
    best = 0
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 4096 * 4096 * 1024 / (time.perf_counter() - t0))
    return best / 1e9


def engine_flops(m, n, R, log_line):
    """Level-3 flops of the block Krylov path from its log line (basis D,
    block b), or None for other paths, and the number of products with A."""
    D = re.search(r"basis=(\d+)", log_line or "")
    b = re.search(r"block=(\d+)", log_line or "")
    meth = re.search(r"method=(\w+)", log_line or "")
    k, big = min(m, n), max(m, n)
    if not (D and b and meth and meth.group(1) == "krylov"):
        return None, None
    D, b = int(D.group(1)), int(b.group(1))
    blocks = D // b
    fl = 2 * blocks * 2.0 * m * n * b        # op(A) and op(A)^T per block
    fl += 2.0 * k * D * D + 8.0 * k * b * D  # per block: the whole basis
    #                                          projected out once, the last
    #                                          two blocks once
    fl += 1.0 * big * D * D                  # T = Z^T Z, block by block
    fl += blocks * 2 * 5.0 * k * b * b       # LU + Cholesky-QR twice, twice
    fl += 2.0 * (k + big) * D * R            # the factors
    return fl, 2 * blocks


def fmt_bytes(b):
    return "%.2f GB" % (b / 2**30) if b >= 2**30 else "%.0f MB" % (b / 2**20)


def bench_shape(args, torch, C, kk, red, gf, rows):
    path, s = synth(torch, C, kk, args.cache)
    k = C * kk
    R = rank_for(C, kk, red) if red else None
    label = f"({C},{C},{kk},{kk}) {red}x" if red else f"({C},{C},{kk},{kk}) amct"
    # amct computes in float64 by default (the reference's SVD precision);
    # the benchmark compares float32 with float32 (torch.linalg.svd).
    policy = (json.dumps({"name": "fixed", "rank": R, "order": "vertical_first"})
              if red else json.dumps({"name": "amct", "compute": "float32"}))
    spec = spec_file(args.cache, [conv_spec("c", C, kk)])
    eng = best_of(args, path, spec, policy)
    L = eng["layers"][0]
    R = L["rank"]
    opt = float(np.sqrt((s[R:] ** 2).sum() / (s ** 2).sum()))
    e_err = eng.get("measured_error", L["relative_error"])
    row = {"case": label, "rank": f"{R}/{k}", "engine_s": eng["seconds"],
           "engine_err": e_err / opt, "engine_rss": eng["peak_rss"],
           "reported_err": L["relative_error"] / opt,
           "engine_runs": eng["runs"]}
    fl, passes = engine_flops(k, k, R, eng["log"][0] if eng["log"] else "")
    row["engine_bound_s"] = fl / (gf * 1e9) if fl else None
    row["min_bound_s"] = 2.0 * k * k * R / (gf * 1e9)  # one pass at width R
    row["log"] = eng["log"][0] if eng["log"] else ""
    if not args.no_torch:
        W = np.load(path, mmap_mode="r")
        M = torch.from_numpy(matrix_of(W))
        del W
        key = (C, kk)
        if key not in TORCH_SVD:  # once per shape, best of --repeat
            runs = []
            for _ in range(args.repeat if k <= 6144 else 1):
                t0 = time.perf_counter()
                U, S, Vh = torch.linalg.svd(M, full_matrices=False)
                runs.append(time.perf_counter() - t0)
                del U, Vh
            TORCH_SVD[key] = (runs, S.double().numpy())
        runs, S = TORCH_SVD[key]
        row["svd_s"], row["svd_runs"] = min(runs), runs
        # Its rank-R truncation is optimal up to float32 rounding.
        row["svd_err"] = float(np.sqrt((S[R:] ** 2).sum() / (S ** 2).sum())) / opt
        row["svd_bound_s"] = 21.0 * k ** 3 / (gf * 1e9)  # Golub-Van Loan, thin
        if red:
            runs = []
            for _ in range(args.repeat if k <= 6144 else 1):
                t0 = time.perf_counter()
                torch.manual_seed(0)
                U, S2, V = torch.svd_lowrank(M, q=min(k, R + max(16, R // 4)),
                                             niter=2)
                runs.append(time.perf_counter() - t0)
            row["lowrank_s"] = min(runs)
            Mr = (U[:, :R] * S2[:R]) @ V[:, :R].T
            row["lowrank_err"] = float(torch.linalg.norm(M - Mr) /
                                       torch.linalg.norm(M)) / opt
            del U, S2, V, Mr
        del M
    rows.append(row)
    report_row(row)


def model_files(torch, name, cache):
    import torchvision
    wpath = os.path.join(cache, f"{name}.pth")
    spath = os.path.join(cache, f"{name}.spec.json")
    if not (os.path.exists(wpath) and os.path.exists(spath)):
        torch.manual_seed(0)
        net = getattr(torchvision.models, name)()
        layers = []
        for n, mod in net.named_modules():
            if isinstance(mod, torch.nn.Conv2d):
                layers.append({"name": n, "type": "Conv2d",
                               "in_channels": mod.in_channels,
                               "out_channels": mod.out_channels,
                               "kernel_size": list(mod.kernel_size),
                               "stride": list(mod.stride),
                               "padding": list(mod.padding),
                               "dilation": list(mod.dilation),
                               "groups": mod.groups, "bias": mod.bias is not None,
                               "padding_mode": mod.padding_mode})
        torch.save(net.state_dict(), wpath)
        with open(spath, "w") as f:
            json.dump({"layers": layers}, f)
    return wpath, spath


def bench_model(args, torch, name, gf, rows):
    wpath, spath = model_files(torch, name, args.cache)
    eng = best_of(args, wpath, spath, "budget")
    row = {"case": f"{name} budget", "engine_s": eng["seconds"],
           "engine_rss": eng["peak_rss"],
           "rank": "%d layers" % len(eng["layers"])}
    if not args.no_torch:
        sd = torch.load(wpath)
        spec = json.load(open(spath))["layers"]
        ranks = {L["name"]: L for L in eng["layers"]}
        # The peer a user would script: every kh,kw > 1 conv through
        # torch (values only where the engine left the layer alone).
        times, worst = [], 0.0
        for rep in range(args.repeat):
            t_svd = 0.0
            for L in spec:
                if L["kernel_size"][0] == 1 or L["kernel_size"][1] == 1:
                    continue
                W = sd[L["name"] + ".weight"].numpy()
                g = L["groups"]
                O = W.shape[0] // g
                for j in range(g):
                    M = torch.from_numpy(matrix_of(W[j * O:(j + 1) * O]))
                    t0 = time.perf_counter()
                    S = torch.linalg.svdvals(M) if L["name"] not in ranks else \
                        torch.linalg.svd(M, full_matrices=False)[1]
                    t_svd += time.perf_counter() - t0
                if rep == 0 and L["name"] in ranks and g == 1:
                    e = ranks[L["name"]]
                    S = S.double().numpy()
                    opt = np.sqrt((S[e["rank"]:] ** 2).sum() / (S ** 2).sum())
                    if opt > 0:
                        worst = max(worst, e["relative_error"] / opt)
            times.append(t_svd)
        t_svd = min(times)
        row["svd_s"] = t_svd
        row["engine_err"] = worst
        row["svd_err"] = 1.0
    rows.append(row)
    report_row(row)


def report_row(r):
    def f(x, spec="%.2f"):
        return spec % x if x is not None else "-"
    sp = (r["svd_s"] / r["engine_s"]) if r.get("svd_s") else None
    lr = (r["lowrank_s"] / r["engine_s"]) if r.get("lowrank_s") else None
    print(f"{r['case']:<24} {r.get('rank', ''):>12} "
          f"engine {f(r['engine_s'])} s err {f(r.get('engine_err'), '%.4f')} "
          f"rss {fmt_bytes(r['engine_rss'])} | svd {f(r.get('svd_s'))} s "
          f"(x{f(sp, '%.1f')}) err {f(r.get('svd_err'), '%.4f')} | lowrank "
          f"{f(r.get('lowrank_s'))} s (x{f(lr, '%.1f')}) err "
          f"{f(r.get('lowrank_err'), '%.4f')} | bound engine "
          f"{f(r.get('engine_bound_s'))} s, 1-pass {f(r.get('min_bound_s'))} s, "
          f"svd {f(r.get('svd_bound_s'))} s", flush=True)


def table(rows, gf):
    print()
    print(f"sgemm: {gf:.1f} GFLOP/s (same run, {os.cpu_count()} cores)")
    print("| case | rank | decompd | error / optimal | peak RSS | "
          "torch.linalg.svd | speed-up | svd_lowrank (niter=2) | its error / optimal | "
          "decompd / its GEMM bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(x, spec="%.2f"):
            return spec % x if x is not None else "–"
        sp = r["svd_s"] / r["engine_s"] if r.get("svd_s") else None
        eb = r["engine_s"] / r["engine_bound_s"] if r.get("engine_bound_s") else None
        lr = (f"{r['lowrank_s']:.2f} s" if r.get("lowrank_s") else "–")
        print(f"| {r['case']} | {r.get('rank', '')} | {r['engine_s']:.2f} s | "
              f"{f(r.get('engine_err'), '%.4f')} | {fmt_bytes(r['engine_rss'])} | "
              f"{f(r.get('svd_s'))} s | {f(sp, '%.1f')}x | {lr} | "
              f"{f(r.get('lowrank_err'), '%.4f')} | {f(eb, '%.1f')}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short subset")
    ap.add_argument("--cases", help="comma list: CxK:2, CxK:4, amct, "
                    "resnet50, vgg16 (default: all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-torch", action="store_true", help="engine only")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per measurement, fastest kept (torch.linalg.svd "
                    "runs once above k = 6144)")
    ap.add_argument("--lib")
    ap.add_argument("--cache", default="/tmp/decompd-bench")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    args.lib = os.path.abspath(find_lib(args.lib))
    os.makedirs(args.cache, exist_ok=True)
    if args.cases:
        cases = args.cases.split(",")
    elif args.quick:
        cases = QUICK
    else:
        cases = [f"{c}x{k}:{r}" for c, k in SHAPES for r in (2, 4)] + [
            "amct", "resnet50", "vgg16"]
    import torch
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        print("load average:", f.read().split()[:3], "cores:", os.cpu_count(),
              "threads:", args.threads, "lib:", args.lib, flush=True)
    gf = gemm_gflops(torch)
    print(f"sgemm {gf:.1f} GFLOP/s", flush=True)
    rows = []
    for c in cases:
        if c == "amct":
            bench_shape(args, torch, 2048, 5, None, gf, rows)
        elif c in ("resnet50", "vgg16"):
            bench_model(args, torch, c, gf, rows)
        else:
            shape, red = c.split(":")
            C, kk = shape.split("x")
            bench_shape(args, torch, int(C), int(kk), int(red), gf, rows)
    table(rows, gf)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gflops": gf, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
