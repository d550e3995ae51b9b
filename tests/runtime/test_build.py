"""Building the compiled pieces: the cache key holds what -march=native means to the compiler (on
any architecture), a failed build is remembered per source and compiler and its warning says what
failed and what to install. (The builds' results against the reference: tests/model/test_attention.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from reformer_seq.model.attention import kernel as kernels
from reformer_seq.runtime import build

GCC_X86 = """Using built-in specs.
COLLECT_GCC=gcc
Target: x86_64-linux-gnu
 /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -E -quiet -v -imultiarch x86_64-linux-gnu - -march=znver3 -mmmx -mpopcnt \
-mavx2 -mno-avx512er -mavx512f --param l1-cache-size=32 --param l2-cache-size=1024 -mtune=znver3 -dumpbase -
COLLECT_GCC_OPTIONS='-march=native' '-E' '-v'
"""
GCC_ARM = """Target: aarch64-linux-gnu
 /usr/lib/gcc/aarch64-linux-gnu/11/cc1 -E -quiet -v -imultiarch aarch64-linux-gnu - -mlittle-endian -mabi=lp64 \
-march=armv8.2-a+crypto+fp16+rcpc+dotprod+ssbs -dumpbase -
"""
CLANG_ARM = """Apple clang version 15.0.0 (clang-1500.1.0.2.5)
Target: arm64-apple-darwin23.2.0
 "/Library/Developer/CommandLineTools/usr/bin/clang" "-cc1" "-triple" "arm64-apple-macosx14.0.0" "-E" \
"-main-file-name" "-" "-target-cpu" "apple-m1" "-target-feature" "+v8.5a" "-target-feature" "+fp-armv8" \
"-target-feature" "+neon" "-fdebug-compilation-dir=/Users/me/somewhere" "-x" "c" "-"
"""


def test_native_target_is_read_from_the_compilers_own_expansion():
    gcc = build._expanded_target(GCC_X86)
    assert gcc.startswith("-march=znver3") and "-mavx2" in gcc and "-mno-avx512er" in gcc
    assert "--param l1-cache-size=32" in gcc and "COLLECT" not in gcc
    arm = build._expanded_target(GCC_ARM)  # aarch64: no /proc/cpuinfo "flags" line, still a key
    assert "-march=armv8.2-a+crypto+fp16+rcpc+dotprod+ssbs" in arm
    clang = build._expanded_target(CLANG_ARM)
    assert "-target-cpu apple-m1" in clang and "-target-feature +neon" in clang
    assert "somewhere" not in clang  # nothing that depends on the current folder
    assert build._expanded_target("no compiler output") == ""
    # two machines that differ only in one feature get different keys
    other = build._expanded_target(CLANG_ARM.replace('"+neon"', '"-neon"'))
    assert other != clang


def test_signature_on_this_machine_is_the_native_expansion():
    cc = build.find_compiler()
    if cc is None:
        pytest.skip(f"no C compiler: {kernels.INSTALL_C}")
    native = build.compiler_signature(cc, ("-O3", "-march=native"))
    plain = build.compiler_signature(cc, ("-O3",))
    assert native.startswith(plain) and len(native) > len(plain) + 20
    assert "-march=" in native or "-target-cpu" in native or "--help=target" not in native
    assert build.compiler_signature(cc, ("-O3", "-march=native")) is native  # asked once per process


FAKE_CC = """#!/bin/sh
# a compiler that fails every compilation, counting the attempts
for a in "$@"; do [ "$a" = "--version" ] && { echo "fakecc 1.0"; exit 0; }; done
for a in "$@"; do [ "$a" = "-shared" ] && echo x >> "$(dirname "$0")/attempts"; done
echo "seqformer_kernels.c:162:17: error: conversion of scalar 'int' to vector 'v8f' involves truncation" >&2
exit 1
"""


@pytest.fixture()
def fake_cc(tmp_path: Path) -> Path:
    cc = tmp_path / "bin" / "fakecc"
    cc.parent.mkdir()
    cc.write_text(FAKE_CC)
    cc.chmod(0o755)
    return cc


@pytest.mark.slow
def test_failed_build_is_remembered_and_warns_what_to_install(fake_cc: Path, tmp_path: Path):
    """In two fresh processes with CC set to a compiler that fails: the first compiles once and
    warns with the compiler's error and what to install; the second does not compile again and
    says the failure is remembered (and where to delete it). The reason reaches unavailable_reason."""
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from reformer_seq.model.attention import kernel as kernels\n"
            "assert kernels.library() is None\n"
            "print('REASON', kernels.unavailable_reason())\n")
    env = {**os.environ, "CC": str(fake_cc), "SEQFORMER_CACHE_DIR": str(tmp_path / "cache"),
           "SEQFORMER_KERNEL": "auto"}
    outs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        outs.append(res.stdout + res.stderr)
    assert (fake_cc.parent / "attempts").read_text().count("x") == 1, outs
    for out in outs:
        assert "compiled attention kernel unavailable" in out and "fakecc" in out
        assert "involves truncation" in out and "GCC 9 or newer or clang" in out, out
        assert "REASON" in out and "involves truncation" in out.split("REASON", 1)[1]
    assert "remembered" not in outs[0] and "remembered" in outs[1]
    markers = list((tmp_path / "cache" / "kernels").glob("*.failed"))
    assert len(markers) == 1 and "delete " + str(markers[0]) in outs[1]
    # SEQFORMER_KERNEL=c turns the remembered failure into an error
    res = subprocess.run([sys.executable, "-c", "from reformer_seq.model.attention import kernel as kernels; kernels.library()"], cwd=REPO,
                         env={**env, "SEQFORMER_KERNEL": "c"}, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "involves truncation" in res.stderr


def test_failure_is_per_compiler(fake_cc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A marker left by one compiler does not stop another (here a second failing one, which
    must then be tried: its attempt is counted) from building."""
    monkeypatch.setenv("SEQFORMER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError, match="involves truncation"):
        kernels.load_library(compiler=str(fake_cc))
    with pytest.raises(build.BuildError, match="remembered"):
        kernels.load_library(compiler=str(fake_cc))
    other = fake_cc.with_name("othercc")
    other.write_text(FAKE_CC.replace("fakecc 1.0", "othercc 2.0"))
    other.chmod(0o755)
    with pytest.raises(build.BuildError, match="othercc.*involves truncation"):
        kernels.load_library(compiler=str(other))
    assert (fake_cc.parent / "attempts").read_text().count("x") == 2
    assert len(list((tmp_path / "cache" / "kernels").glob("*.failed"))) == 2
