"""Files, not models: from a manifest entry or a Hub repository id to files in the local cache.

- Published entries and Hub repositories: `config.json` + `model.safetensors` through huggingface_hub, the
  sha256 of the weights checked against the manifest's pin (huggingface_hub checks sizes only).
- Unpublished entries: the authors' original `.th`, streamed from `source.url` into
  `CACHE/vdvae-zoo/originals/` (sha256 checked when pinned), under a per-name lock. Converting it into a
  model folder is the loader's job (pretrained.py); `converted_folder` says where that folder lives.

Nothing here deletes or creates anything outside the cache: names are validated by the manifest and every
path is checked to stay inside the cache root; a cached symlink is unlinked, its target deleted only when it
is itself inside the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from ..data.files import CONFIG_NAME, WEIGHTS_NAME, atomic_write, sha256_file
from .manifest import ModelEntry, valid_name

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "IntegrityError",
    "NotCachedError",
    "default_cache_dir",
    "offline",
    "file_sha256",
    "converted_folder",
    "hub_repo_folder",
    "cached_folder",
    "is_cached",
    "fetch_hub_folder",
    "fetch_url",
    "download_original",
    "entry_lock",
    "DOWNLOAD_DEADLINE_S",
]

#: Overall limit of one download, in seconds (a server that trickles bytes must not hold a process for ever).
DOWNLOAD_DEADLINE_S = float(os.environ.get("VDVAE_ZOO_DOWNLOAD_DEADLINE_S", 4 * 3600))

CacheDir = str | os.PathLike | None


class IntegrityError(ValueError):
    """A downloaded file does not have the sha256 the manifest pins."""


class NotCachedError(FileNotFoundError):
    """A model is not in the local cache and downloads are off."""


def default_cache_dir() -> Path:
    """Where downloads go: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def offline(local_files_only: bool = False) -> bool:
    """True when nothing may be downloaded: `local_files_only`, or HF_HUB_OFFLINE=1 (read at call time)."""
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _root(cache_dir: CacheDir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, hashed once: the result is recorded (by the file's real path, size, modification time,
    inode and status-change time) in the cache's `vdvae-zoo/sha256.json`, so loading the same weights again hashes
    nothing. A file that changed is hashed again: also one rewritten in place with its size and modification time
    put back, since no program can set the status-change time (ctime). An unwritable cache only means no record
    is kept."""
    import json

    real = Path(path).resolve()
    stat = real.stat()
    key, mark = str(real), [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
    record_file = _root(None) / "vdvae-zoo" / "sha256.json"
    try:
        records = json.loads(record_file.read_text())
        if not isinstance(records, dict):
            records = {}
    except (OSError, ValueError):
        records = {}
    known = records.get(key)
    if isinstance(known, dict) and known.get("mark") == mark and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = sha256_file(real)
    records[key] = {"mark": mark, "sha256": digest}
    try:
        atomic_write(record_file, json.dumps(records, indent=1) + "\n")
    except OSError:
        pass
    return digest


def _inside(path: Path, root: Path) -> Path:
    """`path`, after checking that it cannot leave `root` (a second line of defence behind `valid_name`)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"refusing to use {path}: it is outside the cache {root}")
    return path


def converted_folder(entry: ModelEntry, cache_dir: CacheDir = None) -> Path:
    """Where an unpublished entry's converted `config.json` + `model.safetensors` live."""
    if not valid_name(entry.name):
        raise ValueError(f"model name {entry.name!r} is not a plain name; refusing to use it as a folder name")
    root = _root(cache_dir) / "vdvae-zoo"
    return _inside(root / entry.name, root)


def hub_repo_folder(repo_id: str, cache_dir: CacheDir = None) -> Path:
    """huggingface_hub's cache folder of a repository."""
    return _root(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_folder(entry: ModelEntry, cache_dir: CacheDir = None) -> Path | None:
    """The folder holding the entry's config.json + model.safetensors when it is in the cache, else None (no
    network: for a published entry, the pinned revision's snapshot)."""
    if entry.published:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            entry.hub["repo_id"], WEIGHTS_NAME, cache_dir=str(_root(cache_dir)), revision=entry.hub["revision"]
        )
        folder = Path(found).parent if isinstance(found, str) else None
    else:
        folder = converted_folder(entry, cache_dir)
    return folder if folder and (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file() else None


def is_cached(entry: ModelEntry, cache_dir: CacheDir = None) -> bool:
    """True when loading `entry` needs no download."""
    return cached_folder(entry, cache_dir) is not None


def not_cached_error(name: str, what: str) -> NotCachedError:
    return NotCachedError(
        f"model {name!r} is not in the local cache ({what}) and downloads are off (local_files_only=True or "
        f"HF_HUB_OFFLINE=1). On a machine with internet run `vdvae-zoo download {name}` (with the same HF_HOME "
        "or --cache-dir), or load with local_files_only=False."
    )


def _discard(path: Path, root: Path) -> None:
    """Remove a cached file that failed its check: a symlink is unlinked; its target is deleted only when it
    lies inside the cache (huggingface_hub's blobs), never elsewhere."""
    target = path.resolve() if path.is_symlink() else None
    path.unlink(missing_ok=True)
    if target is not None and target.is_relative_to(root.resolve()) and target.is_file():
        target.unlink()


def hub_endpoint() -> str:
    """The Hub's address: HF_ENDPOINT (read at call time), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """None when a connection to `url`'s host opens within `timeout` seconds, else why not (one phrase). Asked
    before the first download, so that an offline machine or a mistyped name fails at once instead of after a
    downloader's retries."""
    import socket
    import threading
    import urllib.parse

    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return f"{url!r} is not an address"
    outcome: list = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or str(e) or type(e).__name__)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)  # name resolution has no timeout of its own
    if not outcome:
        return f"no answer from {host} within {timeout:.0f} s"
    return None if outcome[0] is None else f"{host}: {outcome[0]}"


def fetch_hub_folder(
    repo_id: str,
    revision: str | None,
    *,
    pinned_revision: str | None = None,
    pinned_sha256: str | None = None,
    cache_dir: CacheDir = None,
    local_files_only: bool = False,
    name: str | None = None,
) -> Path:
    """Download (or find in the cache) `config.json` + `model.safetensors` of a Hub repository; returns their
    folder. With a pin, the weights' sha256 must match (a mismatching file is removed from the cache). A
    `revision` other than the pinned one gives a warning: the pin no longer applies."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    root = _root(cache_dir)
    if revision is not None and pinned_revision and revision != pinned_revision:
        warnings.warn(
            f"{name or repo_id}: revision {revision!r} replaces the manifest's pinned {pinned_revision}; "
            "the sha256 pin no longer applies, so the weights are not checked.",
            stacklevel=3,
        )
        pinned_sha256 = None
    rev = revision or pinned_revision or "main"
    local_only = offline(local_files_only)
    if not local_only:
        why = unreachable(hub_endpoint())
        if why is not None:
            if not _cached(repo_id, rev, root):
                raise ConnectionError(
                    f"the Hub cannot be reached from here ({why}); work offline with "
                    "HF_HUB_OFFLINE=1 and a cached model, or use a local folder or file"
                )
            local_only = True  # in the cache already: no need to ask the Hub
    paths = {}
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths[filename] = _hub_download(repo_id, filename, rev, root, local_only)
        except LocalEntryNotFoundError:
            if local_only:
                raise not_cached_error(name or repo_id, f"{repo_id}@{rev}/{filename}") from None
            raise
        except BaseException:
            remove_free_locks(root / ".locks" / hub_repo_folder(repo_id, root).name)
            raise
    weights = paths[WEIGHTS_NAME]
    if pinned_sha256:
        sha = file_sha256(weights)
        if sha != pinned_sha256.lower():
            _discard(weights, root)
            raise IntegrityError(
                f"{repo_id}@{rev}/{WEIGHTS_NAME} has sha256 {sha}, but the manifest pins "
                f"{pinned_sha256}; the file was deleted from the cache. Try again; if it persists the "
                "repository no longer matches the manifest."
            )
    return weights.parent


def _hub_download(repo_id: str, filename: str, revision: str, root: Path, local_only: bool) -> Path:
    """One file through huggingface_hub; a transfer that breaks off (a connection closed mid-body, a reset) is
    tried once more, then reported in one sentence. Answers of the Hub (no such repository, file or revision)
    are passed on as they are."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    for attempt in (1, 2):
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=str(root),
                    local_files_only=local_only,
                    endpoint=os.environ.get("HF_ENDPOINT") or None,
                )
            )
        except (
            LocalEntryNotFoundError,
            EntryNotFoundError,
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        ):
            raise
        except Exception as e:  # noqa: BLE001 - transport failures of any HTTP stack
            if isinstance(e, OSError) and _local_disk_error(e):  # our disk, not the network: no retry
                raise OSError(e.errno, e.strerror or str(e), getattr(e, "filename", None) or str(root)) from None
            if attempt == 2:
                text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                raise ConnectionError(
                    f"the download of {repo_id}/{filename} broke off twice ({type(e).__name__}"
                    f"{': ' + text if text else ''}); try again later"
                ) from None
    raise AssertionError("unreachable")


def _local_disk_error(e: BaseException) -> bool:
    """A full, read-only or unwritable local disk (not a transfer that broke off)."""
    import errno

    return isinstance(e, OSError) and e.errno in (
        errno.ENOSPC,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        getattr(errno, "EDQUOT", errno.ENOSPC),
    )


def _cached(repo_id: str, revision: str, root: Path) -> bool:
    """True when both files of the repository's `revision` are in the cache (no connection is then needed)."""
    from huggingface_hub import try_to_load_from_cache

    return all(
        isinstance(try_to_load_from_cache(repo_id, name, cache_dir=str(root), revision=revision), str)
        for name in (CONFIG_NAME, WEIGHTS_NAME)
    )


def fetch_url(
    url: str,
    destination: Path,
    expected_sha256: str | None = None,
    *,
    timeout: float = 60.0,
    deadline_s: float | None = None,
) -> str:
    """Stream `url` to `destination` with a progress bar; the file appears only when complete (and its sha256
    matches, when given). `timeout`: seconds without data; `deadline_s`: the whole download. Returns the sha256."""
    from ..data.progress import progress_bar

    deadline_s = DOWNLOAD_DEADLINE_S if deadline_s is None else deadline_s
    digest = hashlib.sha256()
    started = time.monotonic()

    def stream(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with progress_bar(total=total, unit="B", unit_scale=True, desc=destination.name, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() - started > deadline_s:
                        raise TimeoutError(
                            f"download of {url} did not finish within {deadline_s:.0f} s "
                            f"({received:,} of {total or '?'} bytes); try again later"
                        )
            if total is not None and received != total:
                raise OSError(f"download of {url} stopped after {received} of {total} bytes")
        if expected_sha256 and digest.hexdigest() != expected_sha256.lower():
            raise IntegrityError(
                f"{url}: sha256 {digest.hexdigest()} does not match the manifest's {expected_sha256}; "
                "the file was deleted. Try again; if it persists the source changed and the manifest "
                "must be updated."
            )

    try:
        atomic_write(destination, stream)  # the file appears only when complete and checked
    except TimeoutError as e:
        raise ConnectionError(str(e)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # incl. a body cut short
        if isinstance(e, OSError) and _local_disk_error(e) and not isinstance(e, urllib.error.URLError):
            raise OSError(e.errno, e.strerror or str(e), e.filename or str(destination)) from None
        reason = getattr(e, "reason", None) or e or type(e).__name__
        raise ConnectionError(f"could not download {url} ({reason})") from None
    return digest.hexdigest()


@contextlib.contextmanager
def entry_lock(entry: ModelEntry, cache_dir: CacheDir = None):
    """A file lock held while an unpublished entry is downloaded and converted (concurrent loads wait); the lock
    file is removed afterwards when no other process holds it."""
    from huggingface_hub.utils import WeakFileLock

    folder = converted_folder(entry, cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(f"{entry.name}.lock")
    try:
        with WeakFileLock(str(path)):
            yield
    finally:
        remove_free_locks(path.parent, [path])


def remove_free_locks(folder: Path, paths: list | None = None) -> int:
    """Delete the empty `*.lock` files in `folder` (or `paths`) that no process holds (a free lock can be taken
    at once); a failed download leaves them behind. Returns how many went."""
    from filelock import FileLock, Timeout

    removed = 0
    for lock_file in paths if paths is not None else (sorted(folder.glob("*.lock")) if folder.is_dir() else []):
        try:
            if not lock_file.is_file() or lock_file.stat().st_size:
                continue
            with FileLock(str(lock_file), timeout=0):
                lock_file.unlink(missing_ok=True)
                removed += 1
        except (Timeout, OSError):
            continue  # held by another process, or not ours to remove
    return removed


def download_original(entry: ModelEntry, cache_dir: CacheDir = None) -> Path:
    """The entry's original `.th` in `CACHE/vdvae-zoo/originals/NAME.th`, downloaded when missing. Call it
    holding `entry_lock`; the caller deletes the file once converted."""
    folder = converted_folder(entry, cache_dir)
    original = folder.parent / "originals" / f"{entry.name}.th"
    if not original.is_file():
        try:
            fetch_url(entry.source["url"], original, entry.source.get("sha256"))
        except ConnectionError as e:
            if original.parent.is_dir() and not any(original.parent.iterdir()):
                original.parent.rmdir()  # leave no empty folder behind
            size = f"about {entry.parameters * 4 / 1e6:,.0f} MB" if entry.parameters else "the file"
            raise ConnectionError(
                f"{e}; model {entry.name!r} needs {size} from there once. Ways out: run `vdvae-zoo download "
                f"{entry.name}` on a machine with internet and the same HF_HOME (or --cache-dir), then use "
                "HF_HUB_OFFLINE=1 here; or load a file you already have with load(FILE, config=...)"
            ) from None
    return original
