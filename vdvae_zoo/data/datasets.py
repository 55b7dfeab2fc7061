"""The standard data files, read as their users have them, with the splits the paper's authors used.

`open_dataset(path, split)` recognises what `path` is and returns a `Dataset`: a number of images and a way to
read any of them as uint8 NHWC, lazily (memory-mapped arrays, files read on demand), so memory stays bounded
whatever the size of the data set.

Sources, what recognises them, and their test / valid / train splits (docs/evaluate.md has the same as a table):
- CIFAR-10, python: `cifar-10-batches-py/` (or a folder holding it). test: `test_batch` (10,000); valid:
  `data_batch_1..5` stacked, `RandomState(11172018).permutation(50000)[:5000]`; train: the same permutation's other
  45,000, in its order.
- CIFAR-10, binary: `cifar-10-batches-bin/`. test: `test_batch.bin`; valid and train: as above, from
  `data_batch_{1..5}.bin`.
- ImageNet-32/64: `imagenet{32,64}-{valid,train}.npy` (the authors' setup script), or a folder holding them. test:
  `*-valid.npy`, all (the official validation set); valid: `*-train.npy`, `np.random.seed(42)` permutation, its last
  5,000; train: the same permutation without its last 5,000.
- ImageNet folders: `valid_32x32/`, `valid_64x64/` of PNGs. test: all of it.
- FFHQ-256: `ffhq-256.npy`. test and valid: `np.random.seed(5)` permutation, its last 7,000 (the authors' "valid",
  which they report on); train: the permutation without them.
- FFHQ-1024: a folder of `NNNNN.png` (FFHQ's names; sub-folders allowed). test and valid: images 65000-69999;
  train: images 0-64999.
- anything else: a folder of images, or an `.npy` of N x H x W x 3 uint8. test: all of it.

The CIFAR-10 python files are pickles: they are read with a restricted unpickler that accepts only what those
files contain (a dict, bytes, lists, ints and numpy arrays) and refuses anything else before it can run.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import check_user_file, open_user_file
from .images import as_channels, find_images, load_images, read_image

__all__ = [
    "Dataset",
    "open_dataset",
    "files_dataset",
    "DatasetError",
    "SPLITS",
    "CIFAR_VALID_SEED",
    "IMAGENET_SPLIT_SEED",
    "FFHQ256_SPLIT_SEED",
    "FFHQ1024_TEST",
]

#: The authors' split constants (their data.py and setup scripts).
CIFAR_VALID_SEED, CIFAR_VALID_SIZE = 11172018, 5000
IMAGENET_SPLIT_SEED, IMAGENET_VALID_SIZE = 42, 5000
FFHQ256_SPLIT_SEED, FFHQ256_VALID_SIZE = 5, 7000
FFHQ1024_TEST = range(65000, 70000)
SPLITS = ("test", "valid", "train")


class DatasetError(ValueError):
    """A data path that cannot be read as a data set, or a split it does not define."""


@dataclass
class Dataset:
    """`count` images of `size` x `size`, image i read by `read([i, ...])` as uint8 (n, H, W, 3)."""

    name: str  # e.g. "cifar10 (python)"
    split: str  # test, valid, train, or all
    count: int
    size: int | None  # None: images may differ in size (a plain folder)
    read: Callable[[Sequence[int]], np.ndarray]
    fingerprint: dict[str, object]  # what identifies the data (for resuming): paths, sizes, times, count
    rule: str  # the split rule, in words
    files: list[Path] | None = None  # data sets of image files: image i is files[i], read on demand

    def __len__(self) -> int:
        return self.count

    def read_checked(
        self, idx: Sequence[int], size: int, resize: str | None = None, channels: int = 3
    ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Images `idx` for a model of `size` x `size` and `channels` channels: uint8 (m, size, size, C) of those
        that could be read, their positions, and (position, reason) for each one skipped. Files that are not
        readable images, or of another size (unless `resize="center-crop"`), are skipped; arrays were checked as a
        whole when opened, and are converted to the model's channels (images.as_channels)."""
        if self.files is None:
            images = self.read(idx)
            return as_channels(images[..., None] if images.ndim == 3 else images, channels), list(idx), []
        pixels: list[np.ndarray] = []
        kept: list[int] = []
        skipped: list = []
        for i in idx:
            read, ok, bad = load_images([self.files[i]], size=size, resize=resize, channels=channels)
            if ok:
                pixels.append(read[0])
                kept.append(i)
            else:
                skipped.append((i, bad[0][1]))
        return (np.stack(pixels) if pixels else np.zeros((0, size, size, channels), np.uint8)), kept, skipped


# ------------------------------------------------------------------------------------------------ CIFAR-10
class _CifarUnpickler(pickle.Unpickler):
    """Only what the CIFAR-10 python batches hold: builtin containers and numpy arrays."""

    path: Path | str = "a CIFAR-10 batch"
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DatasetError(
                f"refused to read {self.path}: it asks to load {module}.{name}, which no CIFAR-10 "
                "batch holds (only dicts, lists, bytes, ints and numpy arrays are accepted); nothing "
                "in it was run"
            )
        if module.startswith("numpy") and name in ("_reconstruct", "scalar"):
            core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
            multiarray = core.multiarray
            return getattr(multiarray, name)
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> np.ndarray:
    """One python batch as uint8 NHWC."""
    with open_user_file(path, what="CIFAR-10 batch", kind="data") as f:
        unpickler = _CifarUnpickler(f, encoding="bytes")
        unpickler.path = path
        try:
            data = unpickler.load()
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged file
            raise DatasetError(f"cannot read {path} as a CIFAR-10 batch: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or b"data" not in data:
        raise DatasetError(f"{path} is not a CIFAR-10 batch (no 'data' entry)")
    return _chw_rows_to_nhwc(np.asarray(data[b"data"]), path)


def _chw_rows_to_nhwc(rows: np.ndarray, path: Path) -> np.ndarray:
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise DatasetError(f"{path}: expected uint8 rows of 3072 values (3 x 32 x 32), got {rows.dtype} {rows.shape}")
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _cifar_bin(path: Path) -> np.ndarray:
    """One binary batch (records of 1 label byte + 3072 bytes CHW) as a memory-mapped uint8 NHWC view."""
    size = check_user_file(path, what="CIFAR-10 batch").stat().st_size
    if size % 3073:
        raise DatasetError(f"{path} is {size} bytes, not a whole number of 3073-byte CIFAR-10 records")
    records = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // 3073, 3073))
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _cifar(folder: Path, split: str, binary: bool) -> Dataset:
    read_one = _cifar_bin if binary else _cifar_batch
    suffix = ".bin" if binary else ""
    kind = "binary" if binary else "python"
    needed = [f"test_batch{suffix}"] if split == "test" else [f"data_batch_{i}{suffix}" for i in range(1, 6)]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"{folder} lacks {', '.join(missing)}, which the {split} split of CIFAR-10 reads")
    if split == "test":
        files = [folder / f"test_batch{suffix}"]
        arrays = [read_one(files[0])]
        images = arrays[0]
        indices = np.arange(len(images))
        rule = f"test_batch{suffix}, all {len(images)} images"
    else:
        files = [folder / f"data_batch_{i}{suffix}" for i in range(1, 6)]
        images = np.concatenate([read_one(f) for f in files])  # 150 MB at most
        order = np.random.RandomState(CIFAR_VALID_SEED).permutation(len(images))  # sklearn's train_test_split
        indices = order[:CIFAR_VALID_SIZE] if split == "valid" else order[CIFAR_VALID_SIZE:]
        rule = f"data_batch_1..5, RandomState({CIFAR_VALID_SEED}).permutation({len(images)}): " + (
            "its first 5000 (the authors' valid)" if split == "valid" else "all but its first 5000"
        )
    return Dataset(
        f"cifar10 ({kind})",
        split,
        len(indices),
        32,
        lambda idx: np.asarray(images[indices[list(idx)]]),
        _fingerprint(files),
        rule,
    )


# ------------------------------------------------------------------------------------------------- arrays
def _npy(path: Path) -> np.ndarray:
    check_user_file(path, what="array file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a damaged header fails inside numpy's parser in many ways
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DatasetError(
            f"cannot read {path} as a plain .npy array ({why}); pickled .npy files are refused"
        ) from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3 or array.shape[1] != array.shape[2]:
        raise DatasetError(f"{path}: expected uint8 N x S x S x 3 images, got {array.dtype} {array.shape}")
    if array.shape[0] == 0:
        raise DatasetError(f"{path} holds no images (0 x {array.shape[1]} x {array.shape[2]} x 3)")
    return array


def _permuted_split(path: Path, array: np.ndarray, split: str, seed: int, held_out: int, name: str) -> Dataset:
    order = np.random.RandomState(seed).permutation(array.shape[0])  # = their np.random.seed + permutation
    indices = order[-held_out:] if split in ("valid", "test") else order[:-held_out]
    rule = f"{path.name}: np.random.seed({seed}) permutation of {array.shape[0]}, " + (
        f"its last {held_out}" if split != "train" else f"all but its last {held_out}"
    )
    return Dataset(
        name,
        split,
        len(indices),
        array.shape[1],
        lambda idx: np.asarray(array[indices[list(idx)]]),
        _fingerprint([path]),
        rule,
    )


def _whole(name: str, path: Path, array: np.ndarray, split: str) -> Dataset:
    return Dataset(
        name,
        split,
        array.shape[0],
        array.shape[1],
        lambda idx: np.asarray(array[list(idx)]),
        _fingerprint([path]),
        f"{path.name}: all {array.shape[0]} images",
    )


def _imagenet(folder: Path, res: int, split: str) -> Dataset:
    name = f"imagenet{res}"
    if split == "test":
        path = folder / f"{name}-valid.npy"
        return _whole(name, path, _npy(path), "test")
    path = folder / f"{name}-train.npy"
    return _permuted_split(path, _npy(path), split, IMAGENET_SPLIT_SEED, IMAGENET_VALID_SIZE, name)


# ------------------------------------------------------------------------------------------------ folders
def _folder(name: str, files: list[Path], split: str, rule: str, size: int | None = None) -> Dataset:
    def read(idx: Sequence[int]) -> np.ndarray:
        return np.stack([read_image(files[i]) for i in idx])

    return Dataset(
        name, split, len(files), size, read, _fingerprint(files[:1] + files[-1:], count=len(files)), rule, files
    )


def files_dataset(paths: Sequence[str | os.PathLike], recursive: bool = True) -> Dataset:
    """The image files in `paths` (files and folders, searched as `images.find_images` does), in that order:
    what `vdvae-zoo bpd` scores. A single folder gives the same images, in the same order, as `open_dataset` on
    it, so the two score them alike."""
    files = find_images(paths, recursive=recursive)
    if not files:
        raise DatasetError(f"no image files found in {', '.join(map(str, paths))}")
    name = Path(paths[0]).name if len(paths) == 1 else "files"
    return _folder(name, files, "all", f"{len(files)} image files", None)


def _ffhq1024(files: list[Path], split: str) -> Dataset:
    numbered = {int(f.stem): f for f in files if re.fullmatch(r"\d{5}", f.stem)}
    wanted = FFHQ1024_TEST if split in ("test", "valid") else range(0, FFHQ1024_TEST.start)
    chosen = [numbered[i] for i in wanted if i in numbered]
    rule = (
        f"files named {wanted.start:05d}..{wanted.stop - 1:05d} (the authors' setup_ffhq1024.sh); "
        f"{len(chosen)} of them here"
    )
    return _folder("ffhq1024", chosen, split, rule, 1024)


# ---------------------------------------------------------------------------------------------- detection
def _fingerprint(files: Sequence[Path], count: int | None = None) -> dict[str, object]:
    return {
        "files": [str(Path(f).resolve()) for f in files],
        "bytes": [Path(f).stat().st_size for f in files],
        "mtimes": [int(Path(f).stat().st_mtime) for f in files],
        "count": count,
    }


def open_dataset(path: str | os.PathLike, split: str = "test") -> Dataset:
    """The images of `split` in the data at `path` (see the table above). Raises DatasetError naming what is
    missing or not defined."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(path)
    if not path.is_dir():  # a file: a missing one, a FIFO or a device is refused in one sentence, never opened
        check_user_file(path, what="data")
    if path.is_dir():
        for sub in (path, path / "cifar-10-batches-py", path / "cifar-10-batches-bin"):
            for binary, suffix in ((False, ""), (True, ".bin")):
                if (sub / f"test_batch{suffix}").is_file() or (sub / f"data_batch_1{suffix}").is_file():
                    return _cifar(sub, split, binary)
        for res in (32, 64):
            if (path / f"imagenet{res}-valid.npy").is_file() or (path / f"imagenet{res}-train.npy").is_file():
                return _imagenet(path, res, split)
        if (path / "ffhq-256.npy").is_file():
            return open_dataset(path / "ffhq-256.npy", split)
        files = find_images([path])
        if not files:
            raise DatasetError(
                f"{path} holds no data set this reads (CIFAR-10 batches, ImageNet .npy files, "
                "ffhq-256.npy, or image files)"
            )
        if sum(bool(re.fullmatch(r"\d{5}", f.stem)) for f in files) > len(files) // 2 and any(
            int(f.stem) >= FFHQ1024_TEST.start for f in files if re.fullmatch(r"\d{5}", f.stem)
        ):
            return _ffhq1024(files, split)
        match = re.fullmatch(r"valid_(32|64)x\1", path.name)
        name = f"imagenet{match.group(1)}" if match else path.name
        return _only_all(
            _folder(
                name,
                files,
                split if split == "test" else "all",
                f"{path.name}/: all {len(files)} images",
                int(match.group(1)) if match else None,
            ),
            split,
            path,
        )
    if path.suffix == ".npy":
        array = _npy(path)
        match = re.fullmatch(r"imagenet(32|64)-(valid|train)\.npy", path.name)
        if match and (match.group(2) == "valid") == (split == "test"):
            return _imagenet(path.parent, int(match.group(1)), split)
        if match:
            raise DatasetError(
                f"{path.name} holds ImageNet's {'validation' if match.group(2) == 'valid' else 'training'}"
                f" images; split {split!r} comes from imagenet{match.group(1)}-"
                f"{'train' if split != 'test' else 'valid'}.npy (give its folder)"
            )
        if path.name == "ffhq-256.npy":
            return _permuted_split(path, array, split, FFHQ256_SPLIT_SEED, FFHQ256_VALID_SIZE, "ffhq256")
        return _only_all(_whole(path.stem, path, array, "test"), split, path)
    if path.name in ("test_batch", "test_batch.bin"):
        return _cifar(path.parent, split, binary=path.suffix == ".bin")
    raise DatasetError(
        f"{path} is not a data set this reads: give a folder (CIFAR-10 batches, ImageNet .npy files, "
        "images) or an .npy file"
    )


def _only_all(data: Dataset, split: str, path: Path) -> Dataset:
    if split != "test":
        raise DatasetError(f"{path} defines no {split!r} split; all its images are evaluated with --split test")
    data.split = "all"
    return data
