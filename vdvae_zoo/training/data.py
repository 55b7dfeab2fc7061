"""The trainer's data: image folders read lazily at the model's size, flips and batch order decided by seeds, so
they do not depend on DataLoader workers or on how many processes share the batch."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compute.batching import image_seed
from ..data.images import ImageReadError, center_crop_resize, find_images, image_size, read_image

__all__ = ["ImageFolderData", "StepBatches", "StepData", "readable_images"]


class ImageFolderData(torch.utils.data.Dataset):
    """Images resized and centre-cropped to `size`, as uint8 (H, W, C) tensors of `channels` channels; optional
    horizontal flips decided per (seed, epoch, index) so that they do not depend on workers or processes."""

    def __init__(self, files: list[Path], size: int, hflip: bool = False, seed: int = 0, channels: int = 3):
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
                warnings.warn(
                    f"{path} can no longer be read ({e.reason}); using another image in its place",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            raise ImageReadError(self.files[index], "no training image can be read any more")
        if self.hflip and image_seed(image_seed(self.seed, epoch), index) % 2:
            img = img[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img))


class StepBatches(torch.utils.data.Sampler):
    """The batches of steps start, start + 1, ... as lists of (index, epoch): the DataLoader's workers then
    prepare the next batches while the current step runs, in the order the steps will use them."""

    def __init__(self, batch_indices: Callable[[int], list[int]], batches_per_epoch: int, start: int):
        self.batch_indices, self.batches_per_epoch, self.start = batch_indices, batches_per_epoch, start

    def __iter__(self):
        step = self.start
        while True:
            yield [(i, step // self.batches_per_epoch) for i in self.batch_indices(step)]
            step += 1


def readable_images(files: list[Path], size: int, resize: bool, quiet: bool = False) -> list[Path]:
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
        print(
            f"warning: skipped {len(skipped)} of {len(files)} files: "
            + "; ".join(skipped[:3])
            + ("; ..." if len(skipped) > 3 else ""),
            file=sys.stderr,
        )
    return good


class StepData:
    """What each step of a run reads: the training and validation images (a seeded split of --data, or
    --val-data), this process's share of each step's global batch, and each image's posterior noise. All of it is
    decided by (seed, step, position in the global batch), so it does not depend on workers, processes or resumes.
    `options` is the run's TrainOptions."""

    def __init__(self, options, size: int, channels: int, world: int, rank: int, device: torch.device):
        self.opt, self.world, self.rank, self.device = options, world, rank, device
        o = options
        resize = o.resize == "center-crop"
        files = readable_images(find_images([o.data]), size, resize, quiet=rank != 0)
        if o.val_data:
            train_files, val_files = files, readable_images(find_images([o.val_data]), size, resize, quiet=rank != 0)
        else:
            order = np.random.default_rng(o.seed).permutation(len(files))
            n_val = int(round(len(files) * o.val_fraction)) if len(files) > 1 else 0
            val_files = [files[i] for i in sorted(order[:n_val])]
            train_files = [files[i] for i in sorted(order[n_val:])]
        global_batch = self.images_per_update * world
        if len(train_files) < max(o.min_images, global_batch):
            raise ValueError(
                f"{o.data} has {len(train_files)} usable training images of {size}x{size}; need at least "
                f"{max(o.min_images, global_batch)} (batch size {o.batch_size} x {o.grad_accumulation} "
                f"micro-batches x {world} processes)"
                + ("" if resize else "; --resize center-crop uses images of other sizes too")
            )
        self.train_set = ImageFolderData(train_files, size, hflip=o.hflip, seed=o.seed, channels=channels)
        self.val_set = ImageFolderData(val_files, size, channels=channels) if val_files else None
        self.batches_per_epoch = len(train_files) // global_batch
        self._loader: Iterator[Any] | None = None
        self._loader_step = -1

    @property
    def images_per_update(self) -> int:
        """Images per process in one update: --batch-size x --grad-accumulation."""
        return self.opt.batch_size * self.opt.grad_accumulation

    def indices(self, step: int) -> list[int]:
        """Indices of this process's share of the global batch of `step`: a DistributedSampler permutation of
        epoch step // batches_per_epoch, cut into global batches; rank r takes every world-th index."""
        epoch, k = divmod(step, self.batches_per_epoch)
        sampler: torch.utils.data.DistributedSampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.opt.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        mine = list(sampler)
        b = self.images_per_update
        return mine[k * b : (k + 1) * b]

    def batch(self, step: int) -> torch.Tensor:
        """This process's images for `step`. With workers, one DataLoader lives across steps and reads ahead;
        it is rebuilt only when asked for a step it did not prepare (after a resume)."""
        epoch = step // self.batches_per_epoch
        if self.opt.workers <= 0:
            return torch.stack([self.train_set[(i, epoch)] for i in self.indices(step)])
        if self._loader is None or self._loader_step != step:
            batches = StepBatches(self.indices, self.batches_per_epoch, step)
            loader = torch.utils.data.DataLoader(
                self.train_set,
                batch_sampler=batches,
                num_workers=self.opt.workers,
                pin_memory=self.device.type == "cuda",
            )
            self._loader, self._loader_step = iter(loader), step
        self._loader_step += 1
        try:
            return next(self._loader)
        except (
            Exception
        ) as e:  # a worker's error arrives wrapped, with its traceback in the message: keep its last line
            self._loader = None
            last = [line for line in str(e).strip().splitlines() if line.strip()][-1:] or [type(e).__name__]
            raise ValueError(
                f"a DataLoader worker could not read a training image ({last[0].strip()}); check "
                f"{self.opt.data}, then continue with --resume"
            ) from None

    def noise(self, step: int, part: slice = slice(None)):
        """Posterior noise per image from a generator seeded by (seed, step, position in the global batch); `part`:
        the images of this process's share that one micro-batch holds."""
        b = self.images_per_update
        # Generators live on the training device, so on CUDA the draws never cross the bus (their numbers then
        # differ from the CPU's, but not between runs, ranks or resumes on the same kind of device).
        step_seed = image_seed(self.opt.seed, step)
        gens = [
            torch.Generator(device=self.device).manual_seed(image_seed(step_seed, j))
            for j in list(range(self.rank, b * self.world, self.world))[part]
        ]

        def draw(like: torch.Tensor) -> torch.Tensor:
            eps = torch.stack([torch.randn(like.shape[1:], generator=g, device=self.device) for g in gens])
            return eps.to(like.device, like.dtype)

        return draw

    def close(self) -> None:
        """Stop the DataLoader's worker processes."""
        self._loader = None
