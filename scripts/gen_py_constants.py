#!/usr/bin/python3
"""Generate python/decompd/_c_constants.py from decompd's C headers.

The Python package (and the tests' own ctypes binding) mirrors parts of the
C API: the error table (include/decomp/errors.h); log levels, dtype, weight
format and progress phase numbers, artifact names and the ctypes layouts of
the structs passed to the engine (include/decomp/decomp.h); the client's
default URL (include/decomp/client.h). This script reads those headers and writes them
as Python literals, so the package imports them instead of keeping copies.

    /usr/bin/python3 scripts/gen_py_constants.py            # rewrite the file
    /usr/bin/python3 scripts/gen_py_constants.py -o OUT     # write elsewhere

The parsing is deliberately simple and strict: it understands exactly the
forms the headers use (an X-macro list of X(NAME, number, "code",
"message", status) entries, enums with explicit values, plain #defines,
typedef'd structs with one declarator per line) and stops with an error
naming the header and the text on anything else, rather than guess.
"""

import argparse
import os
import re
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join("python", "decompd", "_c_constants.py")
REGENERATE = "/usr/bin/python3 scripts/gen_py_constants.py"

# The structs the ctypes binding (python/decompd/_engine.py) declares.
STRUCTS = ("decomp_tensor", "decomp_progress", "decomp_options")
# Enums exported as PREFIX_SUFFIX constants: enum name -> C prefix stripped.
ENUMS = {"decomp_log_level": "DECOMP_", "decomp_dtype": "DECOMP_",
         "decomp_format": "DECOMP_", "decomp_phase": "DECOMP_"}
# Plain #defines exported (C name -> Python name).
DEFINES = {
    ("decomp.h", "DECOMP_MAX_DIMS"): "MAX_DIMS",
    ("decomp.h", "DECOMP_ARTIFACT_WEIGHTS_PTH"): "ARTIFACT_WEIGHTS_PTH",
    ("decomp.h", "DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS"):
        "ARTIFACT_WEIGHTS_SAFETENSORS",
    ("decomp.h", "DECOMP_ARTIFACT_INFO"): "ARTIFACT_INFO",
    ("decomp.h", "DECOMP_ARTIFACT_INDEX"): "ARTIFACT_INDEX",
    ("client.h", "DECOMP_CLIENT_DEFAULT_URL"): "CLIENT_DEFAULT_URL",
}
# C scalar types and the ctypes names they map to.
SCALARS = {"int": "c_int", "bool": "c_bool", "double": "c_double",
           "float": "c_float", "size_t": "c_size_t", "int64_t": "c_int64",
           "uint64_t": "c_uint64", "int32_t": "c_int32",
           "uint32_t": "c_uint32"}


class HeaderError(Exception):
    pass


def fail(header, what, text):
    text = " ".join(text.split())
    if len(text) > 160:
        text = text[:157] + "..."
    raise HeaderError(f"include/decomp/{header}: {what}: {text!r}")


def strip_comments(text):
    # Headers hold no string with "/*" in it; a stray one fails later.
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


C_STRING = r'"((?:[^"\\\n])*)"'


def c_string(header, s):
    m = re.fullmatch(C_STRING, s.strip())
    if not m:
        fail(header, "expected one plain string literal (no escapes, no "
             "concatenation)", s)
    return m.group(1)


def c_int(header, s):
    s = s.strip()
    if not re.fullmatch(r"-?[0-9]+", s):
        fail(header, "expected a decimal integer", s)
    return int(s)


def parse_errors(header, text):
    """The X(NAME, number, "code", "message", status) entries of
    DECOMP_ERRORS, in order."""
    m = re.search(r"^#define DECOMP_ERRORS\(X\)[ \t]*\\\n((?:.*\\\n)*.*\n)",
                  text, flags=re.M)
    if not m:
        fail(header, "no '#define DECOMP_ERRORS(X)' with continued lines",
             text[:80])
    body = strip_comments(m.group(1).replace("\\\n", "\n"))
    entry = re.compile(
        r"\s*X\(\s*([A-Z][A-Z0-9_]*)\s*,\s*([0-9]+)\s*,\s*" + C_STRING +
        r"\s*,\s*" + C_STRING + r"\s*,\s*([0-9]{3})\s*\)")
    out, pos = [], 0
    body = body.rstrip()
    while pos < len(body):
        e = entry.match(body, pos)
        if not e:
            fail(header, "DECOMP_ERRORS: not an X(NAME, number, \"code\", "
                 "\"message\", status) entry", body[pos:pos + 120])
        name, num, code, msg, http = e.groups()
        out.append((int(num), name, code, msg, int(http)))
        pos = e.end()
    if not out:
        fail(header, "DECOMP_ERRORS is empty", body)
    for i, field in ((0, "number"), (1, "name"), (2, "code")):
        seen = set()
        for row in out:
            if row[i] in seen:
                fail(header, f"DECOMP_ERRORS: duplicate {field}", str(row[i]))
            seen.add(row[i])
    for row in out:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", row[2]):
            fail(header, "DECOMP_ERRORS: code is not snake_case", row[2])
        if not 100 <= row[4] <= 599:
            fail(header, "DECOMP_ERRORS: not an HTTP status", str(row[4]))
    if out[0][:2] != (0, "OK"):
        fail(header, "DECOMP_ERRORS must start with X(OK, 0, ...)",
             str(out[0]))
    return out


def find_block(header, text, opener):
    """The text between the braces after `opener` (a regex), and the text
    after the closing brace."""
    m = re.search(opener + r"\s*\{", text, flags=re.M)
    if not m:
        fail(header, f"no block matching {opener}", "")
    end = text.find("}", m.end())
    if end < 0 or "{" in text[m.end():end]:
        fail(header, "unterminated or nested block", text[m.start():m.end()])
    return text[m.end():end], text[end + 1:]


def parse_enum(header, text, name):
    body, after = find_block(header, text,
                             r"^(?:typedef\s+)?enum\s+" + name + r"\b")
    if not re.match(r"\s*(" + name + r"\s*)?;", after):
        fail(header, f"enum {name}: expected '}};' or '}} {name};'",
             after[:40])
    out = []
    for item in strip_comments(body).split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)\s*=\s*(-?[0-9]+)", item)
        if not m:
            fail(header, f"enum {name}: every value needs 'NAME = number'",
                 item)
        out.append((m.group(1), int(m.group(2))))
    if not out:
        fail(header, f"enum {name} is empty", body)
    return out


def parse_defines(header, text):
    out = {}
    for m in re.finditer(r"^#define[ \t]+([A-Z][A-Z0-9_]*)[ \t]+(.*)$",
                         text, flags=re.M):
        out[m.group(1)] = strip_comments(m.group(2)).strip()
    return out


def parse_struct(header, text, name, defines, enums, fn_types):
    body, after = find_block(header, text,
                             r"^typedef\s+struct\s+" + name + r"\b")
    if not re.match(r"\s*" + name + r"\s*;", after):
        fail(header, f"struct {name}: expected '}} {name};'", after[:40])
    fields = []
    for decl in strip_comments(body).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = re.fullmatch(
            r"(?:const )?([A-Za-z_][A-Za-z0-9_]*) ?(\*?) ?([a-z_][a-z0-9_]*)"
            r"(?:\[([A-Z0-9_]+)\])?", decl)
        if not m:
            fail(header, f"struct {name}: a field this generator does not "
                 f"understand (one declarator, at most one '*' or one "
                 f"[N])", decl)
        ctype, star, field, dim = m.groups()
        if star:
            ct = "c_char_p" if ctype == "char" else "c_void_p"
        elif ctype in SCALARS:
            ct = SCALARS[ctype]
        elif ctype in enums:
            ct = "c_int"
        elif ctype in fn_types:
            ct = ctype  # the binding supplies its CFUNCTYPE
        else:
            fail(header, f"struct {name}.{field}: unknown type", ctype)
        n = 0
        if dim is not None:
            if star or ctype in fn_types:
                fail(header, f"struct {name}.{field}: arrays of pointers "
                     f"are not handled", decl)
            n = c_int(header, defines.get(dim, dim))
            if n <= 0:
                fail(header, f"struct {name}.{field}: bad length", dim)
        fields.append((field, ct, n))
    if not fields:
        fail(header, f"struct {name} has no fields", body)
    return fields


def read(header):
    with open(os.path.join(TOP, "include", "decomp", header),
              encoding="utf-8") as f:
        return f.read()


def generate():
    errors_h, decomp_h, client_h = (read("errors.h"), read("decomp.h"),
                                    read("client.h"))
    errors = parse_errors("errors.h", errors_h)
    defines = {"errors.h": parse_defines("errors.h", errors_h),
               "decomp.h": parse_defines("decomp.h", decomp_h),
               "client.h": parse_defines("client.h", client_h)}
    enums = {name: parse_enum("decomp.h", decomp_h, name) for name in ENUMS}
    enum_types = set(re.findall(r"^typedef enum (\w+) \{", decomp_h,
                                flags=re.M))
    fn_types = set(re.findall(r"^typedef \w+ \(\*(\w+)\)\(", decomp_h,
                              flags=re.M))
    structs = {name: parse_struct("decomp.h", decomp_h, name,
                                  defines["decomp.h"], enum_types, fn_types)
               for name in STRUCTS}

    L = []
    w = L.append
    w('"""Constants and struct layouts mirrored from decompd\'s C headers.')
    w("")
    w("GENERATED by scripts/gen_py_constants.py from include/decomp/errors.h,")
    w("include/decomp/decomp.h and include/decomp/client.h: do not edit.")
    w("After changing those headers, regenerate it with")
    w("")
    w(f"    {REGENERATE}")
    w("")
    w("and commit the result; the `c_constants` test fails while this file")
    w("and the headers disagree, and `c_layouts` checks the struct layouts")
    w("against the C compiler's sizeof/offsetof.")
    w('"""')
    w("")
    w("# include/decomp/errors.h, DECOMP_ERRORS:")
    w("# (number, NAME, code, message, http_status)")
    w("ERRORS = (")
    for row in errors:
        w(f"    {row!r},")
    w(")")
    w("")
    for num, name, _code, _msg, _http in errors:
        w(f"ERR_{name} = {num}")
    w("")
    w("# code -> number, as decomp_error_from_code()")
    w("ERROR_NUMBERS = {code: num for num, _n, code, _m, _h in ERRORS}")
    w("")
    for ename, prefix in ENUMS.items():
        w(f"# include/decomp/decomp.h, enum {ename}")
        for cname, value in enums[ename]:
            if not cname.startswith(prefix):
                raise HeaderError(f"include/decomp/decomp.h: enum {ename}: "
                                  f"{cname} lacks the prefix {prefix}")
            w(f"{cname[len(prefix):]} = {value}")
        w("")
    for (header, cname), pyname in DEFINES.items():
        if cname not in defines[header]:
            raise HeaderError(f"include/decomp/{header}: no #define {cname}")
        v = defines[header][cname]
        if v.startswith('"'):
            value = repr(c_string(header, v))
        else:
            value = repr(c_int(header, v))
        w(f"# include/decomp/{header}, {cname}")
        w(f"{pyname} = {value}")
    w("")
    w("# Struct layouts, in declaration order: (field, type, array length or")
    w("# 0). A type is the name of a ctypes type (enums are c_int, pointers")
    w("# c_char_p or c_void_p) or of a function pointer typedef, for which")
    w("# the binding supplies its ctypes.CFUNCTYPE.")
    for sname, fields in structs.items():
        w(f"STRUCT_{sname[len('decomp_'):].upper()} = (")
        for f in fields:
            w(f"    {f!r},")
        w(")")
    w("")
    return "\n".join(L)


def main(argv):
    ap = argparse.ArgumentParser(
        description="Write python/decompd/_c_constants.py from the C "
                    "headers in include/decomp/.")
    ap.add_argument("-o", "--output", default=os.path.join(TOP, OUTPUT),
                    help=f"where to write (default: {OUTPUT})")
    a = ap.parse_args(argv[1:])
    try:
        text = generate()
    except HeaderError as e:
        print(f"gen_py_constants.py: {e}", file=sys.stderr)
        return 1
    tmp = a.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
