/* decomp/errors.h — the one list of decompd's error codes.
 *
 * Every component (engine, store, server, client, CLI) reports failures with
 * these codes. The X-macro below generates the enum, decomp_strerror(), the
 * stable snake_case `code` strings of problem+json bodies, and the HTTP status
 * each code maps to. Numbers are part of the ABI: never renumber, only append.
 * The functions below are compiled once, in src/common/errors.c, which every
 * component links; the Python package's copy (python/decompd/_c_constants.py)
 * is generated from this list: after changing it, run
 * `/usr/bin/python3 scripts/gen_py_constants.py` (the c_constants test fails
 * until then). Keep the entries in the form X(NAME, number, "code",
 * "message", status): the generator refuses anything else.
 */
#ifndef DECOMP_ERRORS_H
#define DECOMP_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, number, code string, message, http status) */
#define DECOMP_ERRORS(X)                                                          \
  X(OK, 0, "ok", "success", 200)                                                  \
  X(NOMEM, 1, "out_of_memory", "out of memory", 500)                              \
  X(IO, 2, "io_error", "input/output error", 500)                                 \
  X(INVALID_ARGUMENT, 3, "invalid_argument", "invalid argument", 400)             \
  X(INTERNAL, 4, "internal", "internal error", 500)                               \
  X(CANCELLED, 5, "cancelled", "cancelled", 409)                                  \
  X(TOO_LARGE, 6, "too_large", "input too large", 413)                            \
  /* weight formats */                                                            \
  X(UNKNOWN_FORMAT, 10, "unknown_format", "not a recognised weight file", 422)    \
  X(BAD_ZIP, 11, "bad_zip", "malformed zip archive", 422)                         \
  X(BAD_PICKLE, 12, "bad_pickle", "malformed or unsupported pickle", 422)         \
  X(FORBIDDEN_GLOBAL, 13, "forbidden_global",                                     \
    "pickle refers to a global that is not allowed", 422)                         \
  X(BAD_TENSOR, 14, "bad_tensor", "tensor does not fit its storage", 422)         \
  X(BAD_SAFETENSORS, 15, "bad_safetensors", "malformed safetensors file", 422)    \
  X(UNSUPPORTED_DTYPE, 16, "unsupported_dtype", "unsupported tensor dtype", 422)  \
  X(TORCHSCRIPT, 17, "torchscript_unsupported",                                   \
    "TorchScript archive: this build cannot read TorchScript", 422)               \
  X(BAD_TORCHSCRIPT, 18, "bad_torchscript", "TorchScript archive failed to load", \
    422)                                                                          \
  X(BAD_SHARD_INDEX, 19, "bad_shard_index",                                      \
    "invalid sharded checkpoint (index or shards)", 422)                          \
  /* spec, policy, decomposition, info */                                         \
  X(BAD_SPEC, 20, "bad_spec", "invalid layer spec", 400)                          \
  X(SPEC_MISMATCH, 21, "spec_mismatch", "layer spec does not match the weights",  \
    422)                                                                          \
  X(BAD_POLICY, 22, "bad_policy", "invalid rank policy", 400)                     \
  X(NONFINITE, 23, "nonfinite_weights", "weights contain NaN or Inf", 422)        \
  X(BAD_INFO, 24, "bad_info", "invalid decompose_info file", 400)                 \
  X(SVD_FAILED, 25, "svd_failed", "SVD did not converge", 500)                    \
  X(BAD_CALIBRATION, 26, "bad_calibration", "invalid calibration file", 422)      \
  X(OUT_OF_REACH, 27, "target_out_of_reach",                                      \
    "the policy's target is out of reach within its quality floor", 422)          \
  X(BAD_PROFILE, 28, "bad_profile", "invalid latency profile", 422)               \
  X(BAD_TASK, 29, "bad_task", "task record does not fit the job", 422)           \
  /* service */                                                                   \
  X(BAD_JSON, 40, "bad_json", "request body is not valid JSON", 400)              \
  X(BAD_REQUEST, 41, "bad_request", "bad request", 400)                           \
  X(UNAUTHORIZED, 42, "unauthorized", "a valid bearer token is required", 401)    \
  X(FORBIDDEN, 43, "forbidden", "the token's role does not allow this", 403)      \
  X(NOT_FOUND, 44, "not_found", "not found", 404)                                 \
  X(METHOD_NOT_ALLOWED, 45, "method_not_allowed", "method not allowed", 405)      \
  X(CONFLICT, 46, "conflict", "conflicts with the resource's state", 409)         \
  X(PAYLOAD_TOO_LARGE, 47, "payload_too_large", "request body over the limit",   \
    413)                                                                          \
  X(RANGE_NOT_SATISFIABLE, 48, "range_not_satisfiable", "range not satisfiable", \
    416)                                                                          \
  X(STORE, 49, "store_error", "artifact store error", 500)                        \
  X(UNAVAILABLE, 50, "unavailable", "service unavailable", 503)                   \
  X(DB_TOO_NEW, 51, "db_too_new", "database schema is newer than this binary",    \
    500)                                                                          \
  X(ENCODE, 52, "encode_failed", "could not encode the answer as JSON", 500)      \
  X(UPLOAD_DIGEST, 53, "upload_digest_mismatch",                                  \
    "the uploaded bytes do not have the digest they were sent under", 422)        \
  /* client */                                                                    \
  X(CONNECT, 60, "connect_failed", "could not connect to the server", 503)        \
  X(DIGEST_MISMATCH, 61, "digest_mismatch", "downloaded data failed its digest",  \
    502)                                                                          \
  X(DISK_FULL, 62, "disk_full", "no space left on device", 507)                   \
  X(OFFLINE_MISS, 63, "offline_miss", "offline mode and not in the cache", 404)   \
  X(SERVER, 64, "server_error", "the server answered with an error", 502)     \
  X(TRANSFER, 65, "transfer_interrupted",                                       \
    "the connection broke during a transfer", 502)                              \
  X(TIMEOUT, 66, "timeout", "timed out", 504)

typedef enum decomp_error {
#define DECOMP_ERROR_ENUM_(name, num, code, msg, http) DECOMP_ERR_##name = num,
  DECOMP_ERRORS(DECOMP_ERROR_ENUM_)
#undef DECOMP_ERROR_ENUM_
} decomp_error;

#define DECOMP_OK DECOMP_ERR_OK

/* A short English sentence for `err`; never NULL (unknown codes get a
 * generic text). The pointer is static. */
const char *decomp_strerror(int err);

/* The stable snake_case name of `err` ("bad_pickle"), used as the `code` of
 * problem+json bodies and in `--json` output; "unknown" for unknown codes. */
const char *decomp_error_code(int err);

/* The HTTP status that `err` maps to (500 for unknown codes). */
int decomp_error_http_status(int err);

/* The code whose name is `code`, or -1. */
int decomp_error_from_code(const char *code);

#ifdef __cplusplus
}
#endif
#endif
