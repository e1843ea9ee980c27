"""dslc/files.py, the one writer and bounded reader, in-process: what each kind of path gets."""
from __future__ import annotations

import os
import stat

import pytest

from dslc.diagnostics import CliError
from dslc.reading import human_bytes
from dslc.files import (UnreadableFile, check_memory, ensure_dir, read_json, read_limited,
                        write_atomic)


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_regular_file_is_replaced_atomically_keeping_its_mode(tmp_path):
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")
    target.chmod(0o640)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == []


def test_a_symlink_stays_a_link_and_its_target_gets_the_bytes(tmp_path):
    (tmp_path / "real.txt").write_bytes(b"old")
    (tmp_path / "link.txt").symlink_to("real.txt")
    write_atomic(tmp_path / "link.txt", b"new")
    assert os.readlink(tmp_path / "link.txt") == "real.txt" and (tmp_path / "real.txt").read_bytes() == b"new"


def test_a_fifo_without_a_reader_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(CliError, match="pipe with no reader"):
        write_atomic(tmp_path / "pipe", b"x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)


def test_a_character_device_is_written_into_never_replaced(tmp_path):
    try:
        os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(tmp_path / "full", 0o600 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("device nodes need root")
    write_atomic(tmp_path / "null", b"gone")
    with pytest.raises(CliError, match="no space left"):
        write_atomic(tmp_path / "full", b"x")
    assert all(stat.S_ISCHR(os.lstat(tmp_path / n).st_mode) for n in ("null", "full"))


@pytest.mark.parametrize("name, message", [("folder", "it is a directory"), ("missing/out", "no such directory"),
                                           ("plain/out", "not a directory"), ("x" * 300, "file name too long")])
def test_unusable_paths_are_one_line_errors_naming_them(tmp_path, name, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_bytes(b"keep")
    with pytest.raises(CliError, match=message) as e:
        write_atomic(tmp_path / name, b"x")
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "plain").read_bytes() == b"keep" and leftovers(tmp_path) == []


def test_ensure_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "plain").write_bytes(b"keep")
    assert ensure_dir(tmp_path / "a" / "b").is_dir()
    with pytest.raises(CliError, match="in the way"):
        ensure_dir(tmp_path / "plain")


def test_reads_take_regular_files_within_their_limit(tmp_path):
    (tmp_path / "small").write_bytes(b"12345")
    assert read_limited(tmp_path / "small", 5, "a test file") == b"12345"
    with pytest.raises(UnreadableFile, match="more than the 4 bytes a test file may hold"):
        read_limited(tmp_path / "small", 4, "a test file")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UnreadableFile, match="is a FIFO"):
        read_limited(tmp_path / "pipe", 100, "a test file")  # refused at once, no writer needed
    with pytest.raises(UnreadableFile, match="is a directory"):
        read_limited(tmp_path, 100, "a test file")


def test_json_too_deep_or_broken_is_located(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(UnreadableFile, match="nested too deeply"):
        read_json(tmp_path / "deep.json", 1 << 20, "a test file")
    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(UnreadableFile, match="line 2, column 7"):
        read_json(tmp_path / "bad.json", 1 << 20, "a test file")


def test_a_size_beyond_memory_is_refused_before_allocating():
    check_memory(1 << 20, "a megabyte", "x")
    with pytest.raises(UnreadableFile, match="needs 8 TiB"):
        check_memory(8 << 40, "8 TiB", "x")
    assert human_bytes(3 << 30) == "3 GiB" and human_bytes(3.5 * 2**30) == "3.5 GiB" and human_bytes(12) == "12 bytes"
