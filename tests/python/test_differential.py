"""The differential campaign (differential.py) for a bounded time: the
coverage cases (the centre-only conv that once got error 0.76 reported as
0, every SVD path, float64, huge/tiny/subnormal scales, fp16/bf16, every
policy, channel_svd, Linear svd, whitened by a calibration), then seeded random cases until DECOMPD_DIFF_SECONDS (60) have
passed. The seed is DECOMPD_DIFF_SEED, or one drawn per run and printed, so
every run covers new cases and a failure names what reproduces it:

    /usr/bin/python3 tests/python/differential.py --seed S --case N
"""
import os
import random

from differential import campaign

DECOMPCTL = os.path.join(os.environ.get("DECOMPD_BUILD_DIR", "build-test"),
                         "src", "cli", "decompctl")


def test_written_factors_are_within_one_percent_of_numpy_and_the_info_file_says_what_they_achieve():
    seconds = float(os.environ.get("DECOMPD_DIFF_SECONDS", "60"))
    seed = int(os.environ.get("DECOMPD_DIFF_SEED",
                              str(random.SystemRandom().randrange(2 ** 31))))
    print(f"differential campaign: seed {seed}, {seconds:.0f} s")
    stats = campaign(DECOMPCTL, seconds, seed)
    print(f"differential campaign: seed {seed}: {stats}")
    # Every SVD path ran: gesdd on small matrices, the Gram spectrum, the
    # Krylov truncated SVD and the float64 Gram eigenpairs (eig) on large
    # ones, restarts where a basis met the matrix's rank, float64 compute.
    for path in ("gesdd", "krylov", "gram", "eig", "deflated", "float64",
                 "spatial_svd", "channel_svd", "svd", "whitened"):
        assert stats.get(path, 0) > 0, f"no case took the {path} path: {stats}"
    assert stats["layers"] > 0
