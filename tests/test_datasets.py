"""Issue #15: the standard data files, read in their real layouts, with the authors' splits. Each split is
checked against a re-implementation of the original data.py on small synthetic files (split sizes scaled down)."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from vdvae_zoo.data import datasets
from vdvae_zoo.data.datasets import DatasetError, open_dataset

RNG = np.random.default_rng(0)


def images(n, size=32):
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def chw_rows(x):
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


@pytest.fixture()
def small_splits(monkeypatch):
    monkeypatch.setattr(datasets, "CIFAR_VALID_SIZE", 10)
    monkeypatch.setattr(datasets, "IMAGENET_VALID_SIZE", 6)
    monkeypatch.setattr(datasets, "FFHQ256_VALID_SIZE", 7)


# --------------------------------------------------------------------- the original's code, for comparison
def original_cifar_valid_train(all_train, valid_size=10, seed=11172018):
    """data.py: train_test_split(trX, test_size=5000, random_state=11172018) (sklearn: RandomState permutation,
    the first test_size are the held-out part)."""
    order = np.random.RandomState(seed).permutation(len(all_train))
    return all_train[order[valid_size:]], all_train[order[:valid_size]]


def original_permuted(array, seed, held_out):
    """data.py's imagenet32/64 (seed 42, 5000) and ffhq256 (seed 5, 7000)."""
    np.random.seed(seed)
    order = np.random.permutation(array.shape[0])
    return array[order[:-held_out]], array[order[-held_out:]]


# ------------------------------------------------------------------------------------------------- CIFAR-10
@pytest.fixture()
def cifar(tmp_path):
    test, train = images(30), [images(12) for _ in range(5)]
    py, binary = tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-batches-bin"
    py.mkdir()
    binary.mkdir()
    for name, x in [("test_batch", test)] + [(f"data_batch_{i + 1}", t) for i, t in enumerate(train)]:
        with open(py / name, "wb") as f:  # as the python version holds them: a dict of bytes keys
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": list(range(len(x))),
                    b"data": chw_rows(x),
                    b"filenames": [b"x.png"] * len(x),
                },
                f,
                protocol=2,
            )
        labels = np.arange(len(x), dtype=np.uint8)[:, None]
        (binary / f"{name}.bin").write_bytes(np.concatenate([labels, chw_rows(x)], axis=1).tobytes())
    return tmp_path, test, np.concatenate(train)


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-10-batches-bin", "."])
def test_cifar10_splits_match_the_original(cifar, small_splits, layout):
    root, test, all_train = cifar
    path = root / layout if layout != "." else root
    train, valid = original_cifar_valid_train(all_train)
    got = {s: open_dataset(path, s) for s in ("test", "valid", "train")}
    assert np.array_equal(got["test"].read(range(len(got["test"]))), test)
    assert np.array_equal(got["valid"].read(range(len(got["valid"]))), valid)
    assert np.array_equal(got["train"].read(range(len(got["train"]))), train)
    assert got["test"].name.startswith("cifar10") and len(got["test"]) == 30


def test_a_malicious_cifar_pickle_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(DatasetError, match="asks to load posix.system.*nothing in it was run"):
        open_dataset(folder)
    assert not marker.exists()


def test_a_damaged_binary_batch_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(b"x" * 3074)
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte"):
        open_dataset(folder)
    with pytest.raises(DatasetError, match="lacks data_batch_1.bin"):
        open_dataset(folder, "train")


# ------------------------------------------------------------------------------------------------ ImageNet
@pytest.mark.parametrize("res", [32, 64])
def test_imagenet_npy_splits_match_the_original(tmp_path, small_splits, res):
    valid_npy, train_npy = images(9, res), images(20, res)
    np.save(tmp_path / f"imagenet{res}-valid.npy", valid_npy)
    np.save(tmp_path / f"imagenet{res}-train.npy", train_npy)
    train, valid = original_permuted(train_npy, 42, 6)
    test = open_dataset(tmp_path / f"imagenet{res}-valid.npy")
    assert test.name == f"imagenet{res}" and np.array_equal(test.read(range(9)), valid_npy)
    assert np.array_equal(open_dataset(tmp_path, "valid").read(range(6)), valid)
    assert np.array_equal(open_dataset(tmp_path, "train").read(range(14)), train)
    with pytest.raises(DatasetError, match="comes from imagenet"):
        open_dataset(tmp_path / f"imagenet{res}-valid.npy", "train")


def test_imagenet_png_folder_is_the_whole_validation_set(tmp_path):
    folder = tmp_path / "valid_32x32"
    folder.mkdir()
    x = images(5)
    for i, img in enumerate(x):
        Image.fromarray(img).save(folder / f"{i:08d}.png")
    data = open_dataset(folder)
    assert data.name == "imagenet32" and data.size == 32 and np.array_equal(data.read(range(5)), x)
    with pytest.raises(DatasetError, match="defines no 'valid' split"):
        open_dataset(folder, "valid")


def test_a_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="pickled .npy files are refused"):
        open_dataset(tmp_path / "x.npy")


# ---------------------------------------------------------------------------------------------------- FFHQ
def test_ffhq256_split_matches_the_original(tmp_path, small_splits):
    x = images(25, 8)  # tiny stand-ins for 256x256 (the split does not look at the pixels)
    np.save(tmp_path / "ffhq-256.npy", x)
    train, valid = original_permuted(x, 5, 7)
    test = open_dataset(tmp_path / "ffhq-256.npy", "test")
    assert test.name == "ffhq256" and np.array_equal(test.read(range(7)), valid)  # the authors report on valid
    assert np.array_equal(open_dataset(tmp_path, "valid").read(range(7)), valid)
    assert np.array_equal(open_dataset(tmp_path / "ffhq-256.npy", "train").read(range(18)), train)


def test_ffhq1024_test_is_images_65000_to_69999(tmp_path):
    for i in (0, 1, 64999, 65000, 65001, 69999):  # FFHQ's names, in its thousand-folders
        sub = tmp_path / f"{i // 1000 * 1000:05d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), i % 251, np.uint8)).save(sub / f"{i:05d}.png")
    test = open_dataset(tmp_path)
    assert test.name == "ffhq1024" and len(test) == 3 and "65000..69999" in test.rule
    assert [int(v) for v in test.read(range(3))[:, 0, 0, 0]] == [65000 % 251, 65001 % 251, 69999 % 251]
    assert len(open_dataset(tmp_path, "train")) == 3


def test_any_other_folder_or_npy_is_all_of_it(tmp_path):
    x = images(4, 16)
    np.save(tmp_path / "mine.npy", x)
    data = open_dataset(tmp_path / "mine.npy")
    assert data.split == "all" and np.array_equal(data.read([3, 1]), x[[3, 1]])
    with pytest.raises(DatasetError, match="no 'train' split"):
        open_dataset(tmp_path / "mine.npy", "train")
