"""The store's S3 client against a real S3-compatible server (suite 's3').

Starts s3rver (npm, installed into tests/s3/node_modules by `npm ci` on the
first run, one process at a time) on 127.0.0.1 with a port the kernel picks
and a temporary data folder holding one bucket, and in front of it the
SigV4 checker of sigv4_check.py (s3rver does not check V4 signatures; the
checker refuses what S3 would). Then it runs each test case of the C
program test_s3 (S3_TEST_BIN) alone, with CK_RUN_CASE, as one pytest test
of the same name, through the checker (S3_ENDPOINT; S3_DIRECT_ENDPOINT is
s3rver itself), and fails a case whose requests the checker refused unless
the case is about that refusal.

    S3_TEST_BIN=build/tests/s3/test_s3 python3 -m pytest tests/s3/test_s3.py
"""
import os
import re
import socket
import subprocess

import pytest

import sigv4_check
from s3rver import ACCESS_KEY, SECRET_KEY, S3rver, S3rverError

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "decompd-test"
# The cases about a refusal, and the S3 codes of the refusals they cause;
# every other case must pass the signature checker on every request.
EXPECTED_REFUSALS = {
    "wrong_access_key_is_refused_naming_the_endpoint_and_s3_code":
        {"InvalidAccessKeyId"},
    "wrong_secret_key_is_refused_with_signature_does_not_match":
        {"SignatureDoesNotMatch"},
    "put_with_a_wrong_expected_digest_is_refused_and_leaves_no_object":
        {"XAmzContentSHA256Mismatch"},
}


def c_cases():
    """The test cases of test_s3.c, in its order: ONE(name) lines."""
    with open(os.path.join(HERE, "test_s3.c")) as f:
        return re.findall(r"^\s*ONE\((\w+)\);", f.read(), re.M)


def dead_port():
    """A loopback port nobody listens on (bound, then let go)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def s3rver():
    try:
        server = S3rver([BUCKET]).start()
    except S3rverError as e:
        pytest.fail(str(e))
    try:
        yield {"endpoint": server.endpoint, "proxy": server.proxy,
               "direct": server.direct, "dir": server.dir}
    finally:
        server.stop()


AWS_KEYS = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def aws_example(signed, sig):
    return [f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
            f"us-east-1/s3/aws4_request,SignedHeaders={signed},"
            f"Signature={sig}"]


def test_signature_checker_accepts_aws_documented_examples_only():
    """The checker against the worked examples of AWS's "Signature
    Calculations for the Authorization Header" (GET Object with a Range,
    GET Bucket with a query, PUT Object with a key needing %-encoding),
    and the same requests altered, which it must refuse."""
    get = {"host": ["examplebucket.s3.amazonaws.com"],
           "range": ["bytes=0-9"], "x-amz-content-sha256": [EMPTY],
           "x-amz-date": ["20130524T000000Z"],
           "authorization": aws_example(
               "host;range;x-amz-content-sha256;x-amz-date",
               "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")}
    check = sigv4_check.check
    assert check("GET", "/test.txt", get, b"", AWS_KEYS, "us-east-1") is None
    assert check("GET", "/test.txT", get, b"", AWS_KEYS,
                 "us-east-1")[1] == "SignatureDoesNotMatch"
    assert check("GET", "/test.txt", get, b"", {"AKIAIOSFODNN7EXAMPLE": "x"},
                 "us-east-1")[1] == "SignatureDoesNotMatch"
    listing = {"host": ["examplebucket.s3.amazonaws.com"],
               "x-amz-content-sha256": [EMPTY],
               "x-amz-date": ["20130524T000000Z"],
               "authorization": aws_example(
                   "host;x-amz-content-sha256;x-amz-date",
                   "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")}
    # the checker sorts the query as S3 does: both orders pass
    for q in ("max-keys=2&prefix=J", "prefix=J&max-keys=2"):
        assert check("GET", "/?" + q, listing, b"", AWS_KEYS,
                     "us-east-1") is None
    assert check("GET", "/?max-keys=3&prefix=J", listing, b"", AWS_KEYS,
                 "us-east-1")[1] == "SignatureDoesNotMatch"
    body = b"Welcome to Amazon S3."
    put = {"host": ["examplebucket.s3.amazonaws.com"],
           "date": ["Fri, 24 May 2013 00:00:00 GMT"],
           "x-amz-storage-class": ["REDUCED_REDUNDANCY"],
           "x-amz-content-sha256": [
               "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"],
           "x-amz-date": ["20130524T000000Z"],
           "authorization": aws_example(
               "date;host;x-amz-content-sha256;x-amz-date;"
               "x-amz-storage-class",
               "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")}
    assert check("PUT", "/test%24file.text", put, body, AWS_KEYS,
                 "us-east-1") is None
    assert check("PUT", "/test%24file.text", put, body + b"!", AWS_KEYS,
                 "us-east-1")[1] == "XAmzContentSHA256Mismatch"


def test_every_c_case_is_a_meson_test():
    """meson.build lists the cases (one meson test each): none is left out
    and none is stale."""
    with open(os.path.join(HERE, "meson.build")) as f:
        listed = re.findall(r"^\s*'(\w+)',\s*$", f.read(), re.M)
    assert sorted(listed) == sorted(c_cases())


@pytest.mark.parametrize("case", c_cases())
def test_case(case, s3rver):
    binary = os.environ.get("S3_TEST_BIN")
    assert binary and os.path.exists(binary), \
        "S3_TEST_BIN must name the built test_s3 program"
    env = dict(os.environ)
    env.update({
        "CK_RUN_CASE": case,
        "S3_ENDPOINT": s3rver["endpoint"],
        "S3_DIRECT_ENDPOINT": s3rver["direct"],
        "S3_BUCKET": BUCKET,
        "S3_DIR": s3rver["dir"],
        "S3_DEAD_ENDPOINT": f"http://127.0.0.1:{dead_port()}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    })
    proxy = s3rver["proxy"]
    with proxy.lock:
        proxy.refused.clear()
        proxy.checked = 0
    r = subprocess.run([binary], env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    with proxy.lock:
        codes = {code for _, _, code in proxy.refused}
        refused, checked = list(proxy.refused), proxy.checked
    assert codes == EXPECTED_REFUSALS.get(case, set()), \
        f"the SigV4 checker refused {refused} of {checked} requests"
    if case == "multipart_part_failure_aborts_the_upload_and_leaves_no_object":
        with proxy.lock:
            seen = list(proxy.seen)
        assert any(m == "DELETE" and "uploadId=" in t for m, t, _ in seen), \
            f"no AbortMultipartUpload among {seen}"
    if case == "range_ignored_by_the_service_still_yields_just_the_asked_bytes":
        with proxy.lock:
            gets = [st for m, t, st in proxy.seen
                    if m == "GET" and "norange-" in t]
        assert gets and set(gets) == {200}, \
            f"the service was to ignore the ranges: {gets}"
    # the case ran (a name CK_RUN_CASE does not know runs nothing)
    assert re.search(r"100%: Checks: 1, Failures: 0, Errors: 0", out), out
