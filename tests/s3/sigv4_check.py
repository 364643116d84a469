"""A reverse proxy that checks AWS Signature Version 4 the way S3 does,
in front of s3rver, which does not (s3rver 3.7.1 checks the access key id
of a V4 request, never its signature: "Signature version 4 calculation is
unimplemented" in its authentication middleware).

It is the test's independent oracle for what libcurl signs: written from
AWS's description of the canonical request (docs.aws.amazon.com,
"Signature Calculations for the Authorization Header"), it rebuilds the
canonical request from the request as it arrived: the path decoded and
re-encoded with S3's rules, the query's parameters decoded, re-encoded and
sorted, the signed headers, and the payload hash from x-amz-content-sha256,
which must be there and, unless it is UNSIGNED-PAYLOAD, must be the body's
SHA-256. A request that fails any check gets S3's answer (403
SignatureDoesNotMatch, 403 InvalidAccessKeyId, 400
XAmzContentSHA256Mismatch, 400 AuthorizationHeaderMalformed) and never
reaches s3rver; the others go to s3rver and its answers come back as they
are. `refused` lists the refusals and `seen` every request (method, target,
status), for the tests to see.

It also injects the faults a network and a service have, by the object's
name (the last segment of its key):
  cut-*      a GET without a Range: its answer stops half-way through
             the body, the connection closed (a transfer broken in the
             middle; the resume, with a Range, goes through);
  norange-*  the Range header is dropped (a service that ignores ranges
             answers 200 with the whole object);
  failpart2-*  UploadPart of part 2 answers 500 InternalError.
"""
import hashlib
import hmac
import http.client
import http.server
import re
import threading
import urllib.parse

UNSIGNED = "UNSIGNED-PAYLOAD"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te",
              "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate"}


def uri_encode(s, keep_slash):
    """S3's UriEncode of a decoded string: unreserved bytes as they are,
    every other byte %XX in upper case ('/' kept in paths)."""
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
    out = []
    for byte in s.encode("utf-8", "surrogateescape"):
        if byte in safe or (keep_slash and byte == ord("/")):
            out.append(chr(byte))
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def unquote(s):
    return urllib.parse.unquote(s, errors="surrogateescape")


def canonical_query(raw):
    pairs = []
    for part in raw.split("&") if raw else []:
        name, _, value = part.partition("=")
        pairs.append((uri_encode(unquote(name), False),
                      uri_encode(unquote(value), False)))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_request(method, target, headers, signed, payload_hash):
    """`headers`: lower-case name -> list of values as received."""
    path, _, query = target.partition("?")
    lines = [method, uri_encode(unquote(path), True), canonical_query(query)]
    for name in signed:
        values = headers.get(name)
        if values is None:
            raise KeyError(name)
        lines.append(name + ":" + ",".join(
            re.sub(r"\s+", " ", v.strip()) for v in values))
    lines.append("")
    lines.append(";".join(signed))
    lines.append(payload_hash)
    return "\n".join(lines)


def signature(secret, date, region, service, string_to_sign):
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/]+)/"
                  r"([^/]+)/aws4_request\s*,\s*SignedHeaders=([a-z0-9;-]+)\s*,"
                  r"\s*Signature=([0-9a-f]{64})$")


def check(method, target, headers, body, keys, region):
    """None when the request is signed right, else (status, code, message).
    `keys`: access key id -> secret."""
    auth = headers.get("authorization", [""])[0]
    m = AUTH.match(auth)
    if not m:
        return 400, "AuthorizationHeaderMalformed", "not a V4 Authorization"
    access, date, reg, service, signed, sig = m.groups()
    if access not in keys:
        return 403, "InvalidAccessKeyId", "no such access key id"
    if reg != region or service != "s3":
        return 400, "AuthorizationHeaderMalformed", \
            f"scope {reg}/{service}, expected {region}/s3"
    signed = signed.split(";")
    if signed != sorted(signed) or not {"host", "x-amz-date",
                                        "x-amz-content-sha256"} <= set(signed):
        return 403, "SignatureDoesNotMatch", \
            "host, x-amz-date and x-amz-content-sha256 must be signed, " \
            "in order"
    amz_date = headers.get("x-amz-date", [""])[0]
    if not amz_date.startswith(date):
        return 403, "SignatureDoesNotMatch", "x-amz-date outside the scope"
    unsigned_amz = [h for h in headers
                    if h.startswith("x-amz-") and h not in signed]
    if unsigned_amz:
        return 403, "AccessDenied", \
            "x-amz-* headers that are not signed: " + ",".join(unsigned_amz)
    payload = headers.get("x-amz-content-sha256", [""])[0]
    if payload != UNSIGNED and payload != hashlib.sha256(body).hexdigest():
        return 400, "XAmzContentSHA256Mismatch", \
            "the x-amz-content-sha256 header does not match the body"
    try:
        creq = canonical_request(method, target, headers, signed, payload)
    except KeyError as e:
        return 403, "SignatureDoesNotMatch", f"signed header {e} is missing"
    to_sign = "\n".join([
        "AWS4-HMAC-SHA256", amz_date, f"{date}/{reg}/s3/aws4_request",
        hashlib.sha256(creq.encode("utf-8", "surrogateescape")).hexdigest()])
    if not hmac.compare_digest(
            signature(keys[access], date, reg, "s3", to_sign), sig):
        return 403, "SignatureDoesNotMatch", \
            "The request signature we calculated does not match the " \
            "signature you provided."
    return None


class Proxy:
    """SigV4-checking proxy on 127.0.0.1 (an ephemeral port) in front of
    `upstream` ("127.0.0.1", port); start() returns its endpoint URL."""

    def __init__(self, upstream, keys, region="us-east-1"):
        self.upstream = upstream
        self.keys = keys
        self.region = region
        self.refused = []
        self.seen = []
        self.checked = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, headers, body, head=False):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if len(body) < n:
                    # the client gave up half-way: S3 stores nothing, and
                    # neither may the request reach s3rver cut short
                    self.close_connection = True
                    return
                headers = {}
                for k, v in self.headers.items():
                    headers.setdefault(k.lower(), []).append(v)
                head = self.command == "HEAD"
                refusal = check(self.command, self.path, headers, body,
                                proxy.keys, proxy.region)
                with proxy.lock:
                    proxy.checked += 1
                    if refusal:
                        proxy.refused.append((self.command, self.path,
                                              refusal[1]))
                path, _, query = self.path.partition("?")
                name = unquote(path).rsplit("/", 1)[-1]
                if not refusal and name.startswith("failpart2-") and \
                        self.command == "PUT" and "partNumber=2&" in query:
                    refusal = (500, "InternalError", "injected: part 2 fails")
                if refusal:
                    with proxy.lock:
                        proxy.seen.append((self.command, self.path,
                                           refusal[0]))
                if refusal:
                    status, code, message = refusal
                    xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                           f"<Error><Code>{code}</Code><Message>{message}"
                           "</Message></Error>").encode()
                    self.answer(status, [("Content-Type", "application/xml")],
                                xml, head)
                    return
                up = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    up.putrequest(self.command, self.path, skip_host=True,
                                  skip_accept_encoding=True)
                    drop = HOP_BY_HOP | {"content-length", "expect"}
                    if name.startswith("norange-"):
                        drop = drop | {"range"}
                    for k, v in self.headers.items():
                        if k.lower() not in drop:
                            up.putheader(k, v)
                    if self.command in ("PUT", "POST") or body:
                        up.putheader("Content-Length", str(len(body)))
                    up.endheaders(body)
                    r = up.getresponse()
                    data = r.read()
                    with proxy.lock:
                        proxy.seen.append((self.command, self.path,
                                           r.status))
                    headers = [(k, v) for k, v in r.getheaders()
                               if k.lower() not in HOP_BY_HOP
                               | {"content-length"}]
                    if head:
                        # the length of what a GET would send
                        self.send_response(r.status)
                        for k, v in headers:
                            self.send_header(k, v)
                        self.send_header("Content-Length",
                                         r.getheader("Content-Length", "0"))
                        self.end_headers()
                    elif name.startswith("cut-") and self.command == "GET" \
                            and "range" not in headers and r.status == 200 \
                            and len(data) > 1:
                        self.send_response(r.status)
                        for k, v in headers:
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    else:
                        self.answer(r.status, headers, data)
                finally:
                    up.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)

    def start(self):
        self.thread.start()
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
