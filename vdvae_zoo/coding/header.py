"""The archive's container: magic, format version, a deflated JSON header (model, fingerprint, versions, grid,
image size, the names unless they are the default numbering, the stored images), each image's CRC32, the ANS
words, and a CRC32 of the whole. `read_header` checks every length, checksum and header field before anything is
decoded, so a damaged, truncated, edited or hostile archive is one ArchiveError naming what is wrong."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

from ..blocks import MAX_RESOLUTION
from .bitsback import ArchiveError

__all__ = ["MAGIC", "FORMAT_VERSION", "READABLE_FORMATS", "pack", "read_header", "default_names"]

MAGIC, FORMAT_VERSION = b"VDZ\x01", 3
#: Format 2 (vdvae-zoo 0.x before the grid was chosen per archive: one grid, whole-layer windows) still decodes.
READABLE_FORMATS = (2, 3)
MAX_HEADER_BYTES = 64 * 2**20  # an inflated header larger than this is refused (a 1.5 MB deflate bomb is not read)
MAX_NAME_CHARS = 255


def default_names(n: int) -> list[str]:
    """The names of an archive's images when none were given: 000000.png, 000001.png, ..."""
    return [f"{i:06d}.png" for i in range(n)]


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    """The archive: `payload` is the images' CRC32s (4 bytes each) followed by the ANS words."""
    head = zlib.compress(json.dumps(header, sort_keys=True).encode(), 9)
    body = MAGIC + struct.pack("<HI", FORMAT_VERSION, len(head)) + head + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_HEADER_BYTES)
    except zlib.error as e:
        raise ArchiveError(f"the archive's header is not deflated data ({e})") from None
    if inflater.unconsumed_tail:
        raise ArchiveError(f"the archive's header inflates to more than {MAX_HEADER_BYTES // 2**20} MiB; refused")
    if not inflater.eof:
        raise ArchiveError("the archive's header is cut short")
    return out


def _int(header: dict[str, Any], key: str, low: int, high: int) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ArchiveError(f"the archive's header field {key!r} must be an integer in {low}..{high}, got {value!r:.60}")
    return value


def read_header(archive: bytes) -> tuple[dict[str, Any], bytes]:
    """The header (with `names` filled in and `crc32`, one per image) and the ANS words of an archive, after
    checking its magic, version, lengths, CRC32 and every header field's type and range."""
    if archive[:4] != MAGIC:
        raise ArchiveError("not a vdvae-zoo archive (wrong magic bytes)")
    if len(archive) < 18 or zlib.crc32(archive[:-4]) != struct.unpack("<I", archive[-4:])[0]:
        raise ArchiveError("the archive is damaged or truncated (its CRC32 does not match)")
    version, head_len = struct.unpack("<HI", archive[4:10])
    if version not in READABLE_FORMATS:
        raise ArchiveError(
            f"archive format {version}; this vdvae-zoo reads formats {', '.join(map(str, READABLE_FORMATS))}"
        )
    if 10 + head_len + 4 > len(archive) - 4:
        raise ArchiveError("the archive is truncated (its header is longer than the file)")
    try:
        header = json.loads(_inflate(archive[10 : 10 + head_len]))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        if isinstance(e, ArchiveError):
            raise
        raise ArchiveError(f"the archive's header is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ArchiveError("the archive's header is not a JSON object")
    (payload_len,) = struct.unpack("<I", archive[10 + head_len : 14 + head_len])
    payload = archive[14 + head_len : len(archive) - 4]
    if len(payload) != payload_len:
        raise ArchiveError("the archive is truncated (payload shorter than its header says)")
    n = _int(header, "count", 1, 10**9)
    _int(header, "image_size", 1, MAX_RESOLUTION)
    _int(header, "whiten_words", 0, 2**28)
    _int(header, "push_words", 0, 2**31)
    if len(payload) % 4 or len(payload) < 4 * n:
        raise ArchiveError("the archive is truncated (fewer bytes than one CRC32 per image)")
    for key in ("model", "model_sha256", "fingerprint"):
        if not isinstance(header.get(key), str) or len(header[key]) > 1000:
            raise ArchiveError(f"the archive's header field {key!r} must be text")
    if not isinstance(header.get("versions"), dict) or not all(isinstance(v, str) for v in header["versions"].values()):
        raise ArchiveError("the archive's header field 'versions' must map names to text")
    for key in ("delta", "grid"):  # the span may be a list (one per layer): LatentGrid.from_header checks it
        if not isinstance(header.get(key), (int, float)) or isinstance(header.get(key), bool):
            raise ArchiveError(f"the archive's header field {key!r} must be a number")
    stored = header.get("stored")
    if (
        not isinstance(stored, list)
        or not all(
            isinstance(s, list)
            and len(s) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in s)
            and 0 <= s[0] < n
            and 1 <= s[1] <= len(payload)
            for s in stored
        )
        or len({s[0] for s in stored}) != len(stored)
    ):
        raise ArchiveError("the archive's header field 'stored' must list [image, bytes] pairs of its images")
    names = header.get("names")
    if names is None:
        names = default_names(n)
    elif not isinstance(names, list) or len(names) != n:
        raise ArchiveError(
            f"the archive's header must name its {n} images "
            f"(got {len(names) if isinstance(names, list) else type(names).__name__})"
        )
    for name in names:
        if (
            not isinstance(name, str)
            or not name
            or len(name) > MAX_NAME_CHARS
            or "/" in name
            or "\\" in name
            or name.startswith(".")
            or "\0" in name
        ):
            raise ArchiveError(
                f"the archive holds a file name that is not a plain name of at most {MAX_NAME_CHARS} "
                f"characters ({str(name)[:60]!r}); refused"
            )
    stems = [name.rsplit(".", 1)[0] if "." in name else name for name in names]
    if len(set(stems)) != len(stems):
        raise ArchiveError("the archive names two images alike; refused (nothing was written)")
    header["names"] = names
    header["stored"] = {s[0]: s[1] for s in stored}
    header["crc32"] = np.frombuffer(payload[: 4 * n], dtype="<u4").tolist()
    header["format"] = version
    return header, payload[4 * n :]
