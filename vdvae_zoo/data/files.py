"""Writing files so that a crash never leaves half of one, and hashing them.

Every file and folder this package writes goes through `staged_file` (`atomic_write` on top of it) or
`atomic_folder`: the data go to a temporary beside the target (`.NAME.tmp-PID-RANDOM`), created exclusively
(O_EXCL: a planted file or symbolic link of that name is never opened, and the name cannot be guessed), which is
renamed over the target only when complete. Temporaries left by a process that died are removed by
`remove_stale_temporaries`. Files get the mode the umask gives (others can read a shared model), never the 0600
of `tempfile`. Appending (logs, state files) goes through `append_line`, which never follows a symbolic link.
Reading any file a user names (images, masks, archives, state files, cards, configs, weights, data sets) goes
through `open_user_file` (`read_user_bytes`, `read_small_text`, `check_user_file` on top of it): it opens without
blocking, refuses what is not a regular file (a FIFO would block forever, /dev/zero never ends) and what is larger
than the kind of file can be, in one sentence naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "open_user_file",
    "read_user_bytes",
    "check_user_file",
    "READ_LIMITS",
    "UnreadableFile",
    "atomic_write",
    "staged_file",
    "write_npy",
    "append_line",
    "read_small_text",
    "atomic_folder",
    "recover_folder",
    "sha256_file",
    "remove_stale_temporaries",
    "refuse_existing",
    "disk_full_as_oserror",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "MODEL_SUBFOLDER",
]

# The layout of a model folder (Hugging Face's): the one statement of these names.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: A folder may keep its model in this subfolder instead (a training run keeps its exported EMA weights there);
#: loading the folder loads the subfolder's model.
MODEL_SUBFOLDER = "model"

PathLike = str | os.PathLike
Content = bytes | str | Callable[[Path], None]

_TEMPORARY = re.compile(r"^\.(.+)\.(?:tmp|staging|old)-(\d+)(?:-[A-Za-z0-9_]+)?$")


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_mode(path: Path) -> None:
    """Give a file the mode a plain open() would (some writers, safetensors among them, create files 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def _temporary_prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-{os.getpid()}-"


def _temporary_name(path: Path, kind: str) -> Path:
    """A name beside `path` that nobody can have planted: the PID (for `remove_stale_temporaries`) and 64 random
    bits."""
    return path.with_name(_temporary_prefix(path, kind) + secrets.token_hex(8))


def refuse_existing(path: PathLike, overwrite: bool, hint: str = "pass --overwrite to replace it") -> None:
    """Raise FileExistsError when `path` exists and `overwrite` is false."""
    if not overwrite and (Path(path).exists() or Path(path).is_symlink()):
        raise FileExistsError(f"{path} exists; {hint}")


@contextlib.contextmanager
def staged_file(path: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a new, empty temporary file beside `path`, created exclusively (O_EXCL, a random name); when the block
    ends without an error it takes the name `path` (with `overwrite=False` only if no file has that name then:
    FileExistsError otherwise, and an existing file is refused before the block runs). On an error, or when the
    block leaves nothing at the temporary's path, it is removed and `path` is untouched. Parent folders are made."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temporary_prefix(path, "tmp"), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with disk_full_as_oserror(path):
            yield tmp
        if not tmp.exists():  # the block removed it: it wants nothing placed
            return
        _normal_mode(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def atomic_write(path: PathLike, content: Content, *, overwrite: bool = True) -> Path:
    """Write `content` to `path` atomically: bytes, text (UTF-8, '\\n' line ends), or a function that writes
    the file at the path it is given (e.g. `lambda p: save_file(tensors, str(p))`). Parent folders are made.
    With `overwrite=False` an existing file is refused (FileExistsError) before anything is written, and again at
    the moment the finished file takes its name: one that another process wrote meanwhile is never replaced."""
    path = Path(path)
    with staged_file(path, overwrite=overwrite) as tmp:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
    return path


def write_npy(path: PathLike, array, *, overwrite: bool = True) -> Path:
    """Write a numpy array as an .npy file atomically (`atomic_write`'s rules)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, np.asarray(array))

    return atomic_write(path, write, overwrite=overwrite)


def append_line(path: PathLike, line: str) -> None:
    """Append `line` and a newline to the text file `path` (created if missing), never through a symbolic link:
    a link there is refused with FileExistsError naming it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        if path.is_symlink():
            raise FileExistsError(
                f"{path} is a symbolic link; vdvae-zoo appends only to its own files there. Remove "
                "the link and run again"
            ) from None
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        with disk_full_as_oserror(path):
            f.write(line + "\n")


#: The largest file of each kind a command reads whole (bytes): a larger one is refused before it is read.
READ_LIMITS = {
    "text": 64 << 20,  # config.json, manifests, state files, cards, records
    "image": 512 << 20,  # an image file (its pixel count is checked from its header too)
    "archive": 16 << 30,  # a .vdz archive (read whole: its CRC32 covers all of it)
    "weights": 64 << 30,  # .th / .safetensors
    "data": 1 << 40,  # data files (.npy, CIFAR batches): memory-mapped, never read whole
}


class UnreadableFile(ValueError):
    """A file a user named that is not read: `path`, and `reason` (what it is, and what to give instead)."""

    def __init__(self, what: str, path: Path, reason: str):
        super().__init__(f"{what} {path} is {reason}")
        self.path, self.reason = path, reason


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory, not a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file (reading it would block)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file (reading it may never end)"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


@contextlib.contextmanager
def open_user_file(path: PathLike, *, what: str = "file", kind: str = "text") -> Iterator[BinaryIO]:
    """The one way to open a file a user named for reading. It is opened without blocking and checked on the open
    descriptor (so nothing can swap it in between): a missing file or a dangling link is FileNotFoundError, and
    what is not a regular file (a directory, a FIFO that would block forever, a device such as /dev/zero that never
    ends, a socket) or is larger than READ_LIMITS[kind] is ValueError; each is one sentence naming the file. The
    file object yielded reads normally (blocking)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        dangling = path.is_symlink()
        raise FileNotFoundError(
            f"{what} {path} does not exist" + (" (it is a symbolic link to a missing file)" if dangling else "")
        ) from None
    except IsADirectoryError:
        raise UnreadableFile(what, path, "a directory, not a regular file; give a file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(what, path, f"{_kind_of(info.st_mode)}; give a regular file")
        limit = READ_LIMITS[kind]
        if info.st_size > limit:
            raise UnreadableFile(what, path, f"{info.st_size:,} bytes, more than the {limit:,} such a file can be")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def check_user_file(path: PathLike, *, what: str = "file", kind: str = "data") -> Path:
    """Refuse what `open_user_file` refuses, for readers that must be given a path (memory maps, safetensors)."""
    with open_user_file(path, what=what, kind=kind):
        return Path(path)


def read_user_bytes(path: PathLike, *, what: str = "file", kind: str = "text") -> bytes:
    """The bytes of a file a user named, read through `open_user_file` (and never more than its limit, even when
    the file grows while it is read)."""
    limit = READ_LIMITS[kind]
    with open_user_file(path, what=what, kind=kind) as f:
        # never ask for more than the file holds: read(n) may reserve n bytes first (64 GiB for weights)
        data = f.read(min(limit, os.fstat(f.fileno()).st_size) + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {path} grew past {limit:,} bytes while it was read")
    return data


def read_small_text(path: PathLike, *, what: str = "file", max_bytes: int | None = None) -> str:
    """The UTF-8 text of a file a user named (`read_user_bytes`; `max_bytes` lowers the text limit). Text that is
    not UTF-8 is a ValueError naming the file."""
    data = read_user_bytes(path, what=what, kind="text")
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{what} {path} is {len(data):,} bytes, more than the {max_bytes:,} such a file can be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}); give the file itself") from None


@contextlib.contextmanager
def disk_full_as_oserror(path: PathLike) -> Iterator[None]:
    """Writers report a full disk in their own ways (safetensors: an error holding "code: 28"); inside this block
    it becomes OSError(ENOSPC) naming `path`, which callers can say in one sentence."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:  # a write's error names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except Exception as e:
        if "code: 28" in str(e) or "No space left" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise


def _place_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` only if no file has it, atomically: a hard link fails when the name is taken."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path} exists: another process wrote it while this one worked; it was not "
            "replaced (pass --overwrite to replace it)"
        ) from None
    except OSError:  # a file system without hard links: check, then rename
        refuse_existing(path, False)
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block ends without an error, it replaces `path`
    as a unit (an existing folder is moved aside, then deleted). On an error the staging folder is removed
    and `path` is untouched."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path, "staging"), dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; the folder gets the mode mkdir would give
    old = _temporary_name(path, "old")
    try:
        with disk_full_as_oserror(path):
            yield staging
        for file in staging.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _normal_mode(file)
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
    except BaseException:
        if not path.exists() and old.exists():  # failed between the renames: put the previous folder back
            os.replace(old, path)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def recover_folder(path: PathLike) -> bool:
    """When `path` is missing because a process died between `atomic_folder`'s two renames, move the previous
    folder (set aside as `.NAME.old-PID-RANDOM`, complete) back; returns True if it did."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return False
    aside = sorted(
        (p for p in path.parent.glob(f".{path.name}.old-*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: p.stat().st_mtime,
    )
    if not aside:
        return False
    os.replace(aside[-1], path)
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: PathLike) -> int:
    """Delete the temporaries of `atomic_write`/`atomic_folder` in `folder` whose process is gone; returns how many."""
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        m = _TEMPORARY.match(entry.name)
        if m and not _alive(int(m.group(2))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
