"""The Python package's copies of the C API agree with the C compiler.

C_LAYOUTS (tests/python/c_layouts.c, built by meson) prints what the
compiler makes of include/decomp/*.h: the error table expanded from its
X-macro, enum values, #defines, and sizeof/offsetof of each field of
decomp_tensor, decomp_progress and decomp_options. These tests compare that
with python/decompd/_c_constants.py (generated from the same headers by
scripts/gen_py_constants.py) and with the ctypes structs that
decompd._engine builds from it, so a header change that the generated file
(or the binding) does not follow fails here, by name. The last test checks
that every error code name the package spells out (_err(Class, "name"),
comparisons with .code_name) is one of errors.h's.
"""
import ast
import ctypes
import json
import os
import subprocess

import pytest

from decompd import _c_constants as C
from decompd import _engine, client, errors


@pytest.fixture(scope="module")
def c_view():
    exe = os.environ["C_LAYOUTS"]
    r = subprocess.run([exe], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_error_table_matches_the_x_macro(c_view):
    assert [tuple(e) for e in c_view["errors"]] == list(C.ERRORS)
    for num, name, code, _msg, _http in C.ERRORS:
        assert getattr(C, "ERR_" + name) == num
        assert C.ERROR_NUMBERS[code] == num


def test_enums_and_defines(c_view):
    for name, value in {**c_view["enums"], **c_view["defines"]}.items():
        assert getattr(C, name) == value, name


@pytest.mark.parametrize("struct, cls", [("TENSOR", _engine._Tensor),
                                         ("PROGRESS", _engine._Progress),
                                         ("OPTIONS", _engine._Options)])
def test_ctypes_struct_layout(c_view, struct, cls):
    size, fields = c_view["structs"][struct]
    c_names = [f[0] for f in fields]
    generated = [f[0] for f in getattr(C, "STRUCT_" + struct)]
    py_names = [f[0] for f in cls._fields_]
    assert generated == c_names, (
        f"{struct}: fields in the generated layout {generated} vs the ones "
        f"tests/python/c_layouts.c lists {c_names}")
    assert py_names == c_names
    for name, offset, fsize in fields:
        d = getattr(cls, name)
        assert (d.offset, d.size) == (offset, fsize), (
            f"{struct}.{name}: ctypes offset/size {d.offset}/{d.size}, "
            f"C {offset}/{fsize}")
    assert ctypes.sizeof(cls) == size, f"sizeof {struct}"


def test_package_uses_the_generated_values():
    assert _engine.MAX_DIMS == C.MAX_DIMS
    assert _engine.PHASE_DONE == C.PHASE_DONE
    assert _engine.PHASE_WORKING == C.PHASE_WORKING
    assert client.ARTIFACT_WEIGHTS == C.ARTIFACT_WEIGHTS_PTH
    assert client.ARTIFACT_INFO == C.ARTIFACT_INFO
    assert client.DEFAULT_URL == C.CLIENT_DEFAULT_URL
    assert errors.error_class(C.ERR_NOMEM) is errors.DecompMemoryError
    assert errors.error_class(C.ERR_BAD_POLICY) is errors.DecompValueError
    assert errors.error_class(C.ERR_SVD_FAILED) is errors.DecompRuntimeError


def test_engine_names_its_codes_as_the_table_does():
    # The loaded libdecomp's own decomp_error_code / decomp_strerror.
    lib = _engine.library()
    for num, _name, code, msg, _http in C.ERRORS:
        assert lib.decomp_error_code(num).decode() == code
        assert lib.decomp_strerror(num).decode() == msg


def _spelled_code_names(tree):
    """(line, name) of the error code names a module spells out: the second
    argument of _err(Class, "name", ...), `default = ..., "name"` and the
    strings compared with an exception's .code_name."""
    def strings(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for e in node.elts:
                yield from strings(e)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == \
                "_err" and len(node.args) >= 2:
            for s in strings(node.args[1]):
                yield node.lineno, s
        elif isinstance(node, ast.Compare) and getattr(
                node.left, "attr", "") == "code_name":
            for c in node.comparators:
                for s in strings(c):
                    yield node.lineno, s
        elif isinstance(node, ast.Assign) and isinstance(
                node.targets[0], ast.Tuple) and isinstance(node.value,
                                                           ast.Tuple):
            for t, v in zip(node.targets[0].elts, node.value.elts):
                if getattr(t, "id", "") == "default":
                    for s in strings(v):
                        yield node.lineno, s


def test_code_names_the_package_spells_are_in_the_table():
    pkg = os.path.dirname(C.__file__)
    bad, seen = [], 0
    for fn in sorted(os.listdir(pkg)):
        if not fn.endswith(".py") or fn == "_c_constants.py":
            continue
        path = os.path.join(pkg, fn)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for line, name in _spelled_code_names(tree):
            seen += 1
            if name not in C.ERROR_NUMBERS:
                bad.append(f"{fn}:{line}: {name!r}")
    assert seen >= 20, "the scan found too few code names: is it broken?"
    assert not bad, ("not a code of include/decomp/errors.h: " +
                     ", ".join(bad))
