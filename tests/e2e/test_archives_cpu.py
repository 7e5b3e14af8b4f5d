"""Layers are byte-identical whatever the CPU: ISA-L picks its deflate code at run time from
CPUID (generic, SSE4.2, AVX, AVX2, AVX-512), and builders run on different CPU generations.

The same layer is written natively (AVX-512 on the development machine) and under QEMU's
user-mode emulation of older CPUs; CPUID is read inside each run to show which of ISA-L's paths
it took. On the generic path (no SSE4.2) ISA-L deflates differently, so there the
``Compressor`` must refuse to run. Run as a script, this file prints what one run saw.
"""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import io
import json
import mmap
import random
import shutil
import subprocess
import sys
import zlib
from typing import Any

import pytest

from nixery.pipeline.archives import Compressor, Entry, write_entries_layer

# QEMU CPU model -> the ISA-L path it leads to; TCG has no AVX-512, which the native run covers.
EMULATED = {"Nehalem": "sse4.2", "SandyBridge": "avx", "Haswell": "avx2"}
# push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid; mov [r8..r8+12], eax..edx; pop rbx
_CPUID = "5389f889f14989d00fa241890041895804418948084189500c5bc3"
_XGETBV = "31c90f01d0c3"  # xor ecx, ecx; xgetbv; ret


def _machine_code(hex_code: str, prototype: Any) -> tuple[mmap.mmap, Any]:
    """A function made of these bytes, and the page that holds it (keep it while calling)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(bytes.fromhex(hex_code))
    return page, prototype(ctypes.addressof(ctypes.c_char.from_buffer(page)))


def isal_path() -> str:
    """The path ISA-L's dispatcher (mbin_dispatch_init6) takes on this CPU, from CPUID."""
    regs = ctypes.c_uint32 * 4
    code = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(regs))
    _page, cpuid = _machine_code(_CPUID, code)

    def call(leaf: int) -> tuple[int, ...]:
        out = regs()
        cpuid(leaf, 0, ctypes.pointer(out))
        return tuple(out)

    _, _, ecx1, _ = call(1)
    _, ebx7, _, _ = call(7)
    if not ecx1 & 1 << 20:  # SSE4.2
        return "generic"
    if ecx1 & (1 << 28 | 1 << 27) != 1 << 28 | 1 << 27:  # AVX, OSXSAVE
        return "sse4.2"
    _xpage, xgetbv = _machine_code(_XGETBV, ctypes.CFUNCTYPE(ctypes.c_uint32))
    xcr0 = xgetbv()
    if xcr0 & 6 != 6:  # the OS saves XMM and YMM
        return "sse4.2"
    if not ebx7 & 1 << 5:  # AVX2
        return "avx"
    avx512 = 1 << 16 | 1 << 17 | 1 << 28 | 1 << 30 | 1 << 31  # F, DQ, CD, BW, VL
    return "avx512" if ebx7 & avx512 == avx512 and xcr0 & 0xE6 == 0xE6 else "avx2"


def entries() -> list[Entry]:
    """4.5 MiB of varied content, so that chunks inherit dictionaries of every kind."""
    rng = random.Random(9)
    words = [b"mov", b"call", b"ret", b"push", b"%rax", b"/nix/store/", b"lib", b"\n"]
    text = b" ".join(rng.choices(words, k=250_000))
    low_entropy = rng.randbytes(800_000).translate(bytes(i % 7 for i in range(256)))
    numbers = b"".join(i.to_bytes(4, "little") for i in range(0, 3_000_000, 7))
    parts = {"text": text, "binary": low_entropy, "zeros": bytes(700_000),
             "random": rng.randbytes(600_000), "numbers": numbers}  # fmt: skip
    return [Entry("data", "dir")] + [
        Entry(f"data/{k}", "file", 0o644, data=v) for k, v in parts.items()
    ]


def layer(threads: int = 2) -> bytes:
    compressor = Compressor(threads)
    out = io.BytesIO()
    write_entries_layer(entries(), out, compressor)
    compressor.close()
    return out.getvalue()


def run(cpu: str) -> dict[str, str]:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.fail("qemu-x86_64 is not installed: run scripts/setup.sh --test")
    done = subprocess.run(
        [qemu, "-cpu", cpu, sys.executable, __file__], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, str] = json.loads(done.stdout)
    return seen


@pytest.fixture(scope="module")
def native() -> bytes:
    return layer()


@pytest.mark.parametrize("cpu", EMULATED)
def test_each_isal_path_writes_the_same_bytes(cpu: str, native: bytes) -> None:
    seen = run(cpu)
    assert seen["path"] == EMULATED[cpu] != isal_path()
    assert seen["digest"] == hashlib.sha256(native).hexdigest()


def test_the_generic_path_is_refused() -> None:
    seen = run("qemu64")
    assert seen["path"] == "generic"
    assert "deflates differently" in seen["refused"]


def test_the_layer_is_valid_gzip_whatever_the_threads(native: bytes) -> None:
    assert len(native) > 2 * (1 << 20), "several chunks"
    tar = zlib.decompress(native, 16 + zlib.MAX_WBITS)
    assert tar == gzip.decompress(native)
    subprocess.run(["gzip", "-t"], input=native, check=True)
    assert layer(threads=1) == native


if __name__ == "__main__":
    seen = {"path": isal_path()}
    try:
        seen["digest"] = hashlib.sha256(layer()).hexdigest()
    except RuntimeError as e:
        seen["refused"] = str(e)
    print(json.dumps(seen))
