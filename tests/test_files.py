"""The one atomic writer: files and folders appear complete or not at all, and nothing of ours is lost."""

import os
import stat

import pytest

from vdvae_zoo.data.files import atomic_folder, atomic_write, recover_folder, remove_stale_temporaries


def test_atomic_write_refuses_existing_files_and_keeps_the_umask_mode(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "one\n")
    with pytest.raises(FileExistsError, match="a.txt exists; pass --overwrite"):
        atomic_write(target, "two\n", overwrite=False)
    atomic_write(target, b"three\n")
    assert target.read_text() == "three\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # readable by others as the umask allows


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_folder_replaces_as_a_unit_and_keeps_the_old_one_on_error(tmp_path):
    folder = tmp_path / "model"
    with atomic_folder(folder) as staging:
        (staging / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as staging:
            (staging / "x").write_text("2")
            raise RuntimeError("crash while writing")
    assert (folder / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(FileExistsError):
        with atomic_folder(folder, overwrite=False):
            pass
    with atomic_folder(folder) as staging:
        (staging / "y").write_text("3")
    assert sorted(p.name for p in folder.iterdir()) == ["y"]


def test_a_crash_between_the_two_renames_is_recovered(tmp_path):
    # What a process killed between "move the old folder aside" and "move the new one in" leaves behind.
    aside = tmp_path / ".checkpoint.old-999999"
    aside.mkdir()
    (aside / "meta.json").write_text("{}")
    assert recover_folder(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "meta.json").is_file() and not aside.exists()
    assert not recover_folder(tmp_path / "checkpoint")  # nothing to do once it is there


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".model.safetensors.tmp-999999"  # no such process
    dead.write_bytes(b"x")
    (tmp_path / ".export.staging-999999").mkdir()
    mine = tmp_path / f".config.json.tmp-{os.getpid()}"
    mine.write_bytes(b"y")
    keep = tmp_path / "model.safetensors"
    keep.write_bytes(b"z")
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, keep.name])
