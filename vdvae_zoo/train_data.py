"""The trainer's data: image folders read lazily at the model's size, flips and batch order decided by seeds, so
they do not depend on DataLoader workers or on how many processes share the batch."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch

from .batching import image_seed
from .images import ImageReadError, center_crop_resize, image_size, read_image

__all__ = ["ImageFolderData", "StepBatches", "readable_images"]


class ImageFolderData(torch.utils.data.Dataset):
    """Images resized and centre-cropped to `size`, as uint8 (H, W, C) tensors of `channels` channels; optional
    horizontal flips decided per (seed, epoch, index) so that they do not depend on workers or processes."""

    def __init__(self, files: List[Path], size: int, hflip: bool = False, seed: int = 0, channels: int = 3):
        self.files, self.size, self.hflip, self.seed, self.channels = files, size, hflip, seed, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> torch.Tensor:
        """`index` is an int or an (int, epoch) pair; the epoch decides the flip (workers hold a copy of self).
        A file that can no longer be read (deleted or replaced during the run) is replaced by the next readable
        one, with a warning: the same substitute in every process, so the batch stays the same everywhere."""
        index, epoch = index if isinstance(index, tuple) else (index, 0)
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                img = center_crop_resize(read_image(path, channels=self.channels), self.size)
                break
            except ImageReadError as e:
                warnings.warn(f"{path} can no longer be read ({e.reason}); using another image in its place",
                              RuntimeWarning, stacklevel=2)
        else:
            raise ImageReadError(self.files[index], "no training image can be read any more")
        if self.hflip and image_seed(image_seed(self.seed, epoch), index) % 2:
            img = img[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img))


class StepBatches(torch.utils.data.Sampler):
    """The batches of steps start, start + 1, ... as lists of (index, epoch): the DataLoader's workers then
    prepare the next batches while the current step runs, in the order the steps will use them."""

    def __init__(self, batch_indices: Callable[[int], List[int]], batches_per_epoch: int, start: int):
        self.batch_indices, self.batches_per_epoch, self.start = batch_indices, batches_per_epoch, start

    def __iter__(self):
        step = self.start
        while True:
            yield [(i, step // self.batches_per_epoch) for i in self.batch_indices(step)]
            step += 1


def readable_images(files: List[Path], size: int, resize: bool, quiet: bool = False) -> List[Path]:
    """The files whose header says they are images of `size` x `size` (any size with `resize`), read from headers
    only (fast, whatever the folder's size). The others are skipped: counted in one warning, the first few named."""
    good, skipped = [], []
    for f in files:
        try:
            w, h = image_size(f)
            if not resize and (w, h) != (size, size):
                skipped.append(f"{f}: is {w}x{h}, the model needs {size}x{size} (--resize center-crop)")
                continue
            good.append(f)
        except ImageReadError as e:
            skipped.append(f"{f}: {e.reason}")
    if skipped and not quiet:
        print(f"warning: skipped {len(skipped)} of {len(files)} files: " + "; ".join(skipped[:3])
              + ("; ..." if len(skipped) > 3 else ""), file=sys.stderr)
    return good
