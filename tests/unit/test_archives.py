import gzip
import hashlib
import io
import os
import random
import tarfile

from nixery.pipeline.archives import Compressor, Entry, write_entries_layer, write_store_layer

COMPRESSOR = Compressor()


def make_tree(root):
    pkg = root / "nix" / "store" / ("a" * 32 + "-pkg-1.0")
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    (pkg / "bin" / "tool").chmod(0o555)
    (pkg / "share" / ("deep" * 40)).mkdir(parents=True)  # a name past ustar's 100 characters
    (pkg / "share" / ("deep" * 40) / "data").write_bytes(os.urandom(300_000))
    os.symlink("tool", pkg / "bin" / "alias")
    os.link(pkg / "bin" / "tool", pkg / "bin" / "hardlink")
    os.utime(pkg / "bin" / "tool", (12345, 12345))
    single = root / "nix" / "store" / ("b" * 32 + "-file.txt")
    single.write_text("just a file\n")
    return [str(pkg), str(single)]


def archive(paths):
    out = io.BytesIO()
    blob = write_store_layer(paths, out, COMPRESSOR)
    return blob, out.getvalue()


def test_digests_match_the_bytes_and_rebuilds_are_identical(tmp_path):
    paths = make_tree(tmp_path)
    blob, data = archive(paths)
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert blob.size == len(data)
    os.utime(paths[0] + "/bin/tool", (99999, 99999))  # times must not matter
    assert archive(list(reversed(paths))) == (blob, data)


def test_entries_are_normalised(tmp_path):
    paths = make_tree(tmp_path)
    _, data = archive(paths)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[:2] == ["nix", "nix/store"]
        assert all(m.mtime == 1 and m.uid == 0 and m.gid == 0 for m in members)
        assert all(m.uname == "" and m.gname == "" and not m.pax_headers for m in members)
        assert not any(m.islnk() for m in members), "hard links are stored as files"
        assert names.index(paths[0].lstrip("/") + "/bin") < names.index(
            paths[0].lstrip("/") + "/bin/alias"
        )
        long_name = next(n for n in names if n.endswith("/data"))
        assert len(long_name) > 100
        assert tar.getmember(long_name).size == 300_000
        assert tar.getmember(paths[0].lstrip("/") + "/bin/alias").linkname == "tool"
        assert tar.getmember(paths[0].lstrip("/") + "/bin/tool").mode == 0o555


def test_gzip_header_has_no_name_or_time(tmp_path):
    _, data = archive(make_tree(tmp_path))
    assert data[:4] == b"\x1f\x8b\x08\x00"  # magic, deflate, no flags (so no name)
    assert data[4:8] == b"\x00\x00\x00\x00"  # mtime 0


def test_entry_layers_put_parents_first():
    entries = [
        Entry("etc/passwd", "file", 0o644, data=b"root:x:0:0::/root:/bin/sh\n"),
        Entry("tmp", "dir", 0o1777),
        Entry("etc", "dir"),
        Entry("bin", "dir"),
        Entry("bin/sh", "symlink", target="/nix/store/x-bash/bin/sh"),
    ]
    out = io.BytesIO()
    write_entries_layer(entries, out, COMPRESSOR)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.getnames() == ["bin", "bin/sh", "etc", "etc/passwd", "tmp"]
        assert tar.getmember("tmp").mode == 0o1777
        assert tar.extractfile("etc/passwd").read().startswith(b"root:")


def test_multi_chunk_layers_are_valid_gzip_and_independent_of_threads(tmp_path):
    store = tmp_path / "nix" / "store"
    big = store / ("c" * 32 + "-big-1.0")
    big.mkdir(parents=True)
    rng = random.Random(1)
    for i in range(3):  # past several 1 MiB chunks, compressible like code
        words = [rng.choice([b"mov", b"call", b"ret", b"push", b"%rax"]) for _ in range(400_000)]
        (big / f"part{i}").write_bytes(b" ".join(words))
    blob, data = archive([str(big)])
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile(big.as_posix().lstrip("/") + "/part2").read() == (
            (big / "part2").read_bytes()
        )
    single = Compressor(threads=1, in_flight=1)
    out = io.BytesIO()
    assert (write_store_layer([str(big)], out, single), out.getvalue()) == (blob, data)
    single.close()


def test_layers_written_at_once_share_a_small_compressor(tmp_path):
    """More writers than slots: each makes room from its own chunks, so none waits forever."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(p) for p in _big_files(tmp_path, 4)]
    alone = [archive([p]) for p in paths]
    tight = Compressor(threads=2, in_flight=2)

    def write(path: str):
        out = io.BytesIO()
        return write_store_layer([path], out, tight), out.getvalue()

    with ThreadPoolExecutor(4) as writers:
        assert list(writers.map(write, paths)) == alone
    tight.close()


def _big_files(tmp_path, count):
    store = tmp_path / "nix" / "store"
    rng = random.Random(2)
    for i in range(count):
        path = store / (str(i) * 32 + "-blob")
        path.mkdir(parents=True)
        (path / "data").write_bytes(rng.randbytes(3 << 20))
        yield path
