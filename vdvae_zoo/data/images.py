"""Reading image files and folders into uint8 NHWC arrays, and writing grids.

Rules (documented for users in README):
- Formats: whatever Pillow reads (PNG, JPEG, WebP, BMP, TIFF, GIF: first frame). EXIF orientation is applied.
- Modes: RGB is kept; L, CMYK, YCbCr... convert to RGB; 16-bit integer modes (I;16, I) keep their top 8 bits;
  anything with alpha (RGBA, LA, P with transparency) is composited on white.
- Folders: files with an image extension, recursively if asked, hidden files and folders skipped, sorted.
  Files named explicitly are always tried, whatever their extension.
- Unreadable files are reported as (path, reason) and skipped, never silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .files import UnreadableFile, atomic_write, open_user_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "SAMPLE_PHOTOS",
    "sample_photos",
    "photo_crops",
    "ImageReadError",
    "find_images",
    "read_image",
    "center_crop_resize",
    "load_images",
    "image_size",
    "make_grid",
    "save_png",
]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
#: Images larger than this many pixels are refused before they are decoded (a 97 kB PNG can hold 100 Mpx).
MAX_IMAGE_PIXELS = 64 * 2**20
PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """A file that could not be read as an image; `path` and `reason` say which and why."""

    def __init__(self, path: PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(paths: Sequence[PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted list of image files. A missing path raises FileNotFoundError."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            pattern = p.rglob("*") if recursive else p.glob("*")
            found.extend(
                sorted(f for f in pattern if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(f, p))
            )
        elif p.exists():  # a FIFO, a device, a socket: said as what it is, never opened
            with open_user_file(p, what="input"):
                pass
        else:
            raise FileNotFoundError(
                f"{p} does not exist" + (" (a symbolic link to a missing file)" if p.is_symlink() else "")
            )
    return found


#: The Pillow mode an image of C channels is read in: grey, grey + alpha, RGB, RGBA.
CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _to_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """`img` as CHANNEL_MODES[channels]: 16-bit grey reduced to 8 bits; for 1 and 3 channels transparency is
    composited on white; for 2 and 4 it is kept (an image without it gets an opaque alpha)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        shift = 8 if img.mode != "I" else max(int(arr.max()).bit_length() - 8, 0)
        img = Image.fromarray(np.right_shift(arr, shift).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if channels in (2, 4):
        return img.convert(CHANNEL_MODES[channels])
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(CHANNEL_MODES[channels])


def as_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., H, W, c) images as `channels` channels, by the rules of `_to_mode` (RGB to grey: ITU-R 601
    luma, as Pillow computes it). Arrays that already have `channels` come back as they are."""
    if images.shape[-1] == channels:
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    out = [np.asarray(_to_mode(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im), channels)) for im in flat]
    out = [o[..., None] if o.ndim == 2 else o for o in out]
    return np.stack(out).reshape(*images.shape[:-1], channels)


def _check_pixels(path: PathLike, img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageReadError(
            path,
            f"is {w}x{h} ({w * h / 2**20:.0f} Mpx), more than the {max_pixels / 2**20:.0f} Mpx "
            "this reads; downscale it first",
        )


def read_image(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS, channels: int = 3) -> np.ndarray:
    """One image file as uint8 (H, W, C) for C `channels` (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), by the rules of
    this module; images over `max_pixels` are refused from their header, before decoding. Raises ImageReadError."""
    try:
        with open_user_file(path, what="image", kind="image") as f, Image.open(f) as img:
            _check_pixels(path, img, max_pixels)
            img.seek(0)
            upright = ImageOps.exif_transpose(img)
            upright.load()
            array = np.asarray(_to_mode(upright, channels), dtype=np.uint8).copy()
            return array[..., None] if array.ndim == 2 else array
    except FileNotFoundError:
        raise ImageReadError(path, "file does not exist") from None
    except ImageReadError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageReadError(path, _reason(e)) from None


def _reason(e: Exception) -> str:
    if isinstance(e, UnreadableFile):
        return e.reason
    if isinstance(e, Image.DecompressionBombError):
        return f"too large to read safely ({e})"
    return "not an image Pillow can read" if "cannot identify" in str(e) else f"unreadable ({e})"


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    try:
        with open_user_file(path, what="image", kind="image") as f, Image.open(f) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, _reason(e)) from None


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size` (bicubic, antialiased), then crop the centre square."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    grey = image.ndim == 3 and image.shape[2] == 1
    resized = np.asarray(
        Image.fromarray(image[..., 0] if grey else image).resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    )
    resized = resized[..., None] if grey else resized
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size].copy()


def load_images(
    paths: Iterable[PathLike], size: int | None = None, resize: str | None = None, channels: int = 3
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Read files into one uint8 (N, H, W, C) array (C = `channels`: see `read_image`).

    With `size`, images of another size are skipped ("is WxH, the model needs SxS") unless
    `resize="center-crop"`. Returns (images, the paths read, [(skipped path, reason)]).
    """
    if resize not in (None, "none", "center-crop"):
        raise ValueError(f"resize must be 'center-crop' or None, got {resize!r}")
    arrays, kept, skipped = [], [], []
    for p in map(Path, paths):
        try:
            if size is not None and resize != "center-crop":  # the wrong size is skipped from the header alone
                w, h = image_size(p)
                if (w, h) != (size, size):
                    skipped.append((p, f"is {w}x{h}, the model needs {size}x{size} (use --resize center-crop)"))
                    continue
            img = read_image(p, channels=channels)
        except ImageReadError as e:
            skipped.append((p, e.reason))
            continue
        if size is not None and img.shape[:2] != (size, size):
            img = center_crop_resize(img, size)
        arrays.append(img)
        kept.append(p)
    if arrays and len({a.shape for a in arrays}) > 1:
        raise ValueError("images have different sizes; give a size to check against, or resize them")
    stacked = np.stack(arrays) if arrays else np.zeros((0, size or 0, size or 0, channels), np.uint8)
    return stacked, kept, skipped


def make_grid(images: np.ndarray, ncols: int | None = None, padding: int = 2, zoom: int | None = 1) -> Image.Image:
    """Tile uint8 (N, H, W, C) images into one picture of their own mode (L, LA, RGB, RGBA: a grey model's grid is
    grey, as its --outdir files are), `ncols` per row (default: about square), on white. `zoom` enlarges each image
    that many times (nearest neighbour, pixels stay visible); None: enough for about 128 pixels per image, so
    that 32x32 samples can be looked at."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, channels = images.shape
    zoom = max(1, 128 // max(h, w)) if zoom is None else zoom
    if zoom > 1:
        images = images.repeat(zoom, axis=1).repeat(zoom, axis=2)
        h, w = h * zoom, w * zoom
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, channels), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = img
    return Image.fromarray(grid[..., 0] if channels == 1 else grid, CHANNEL_MODES[channels])


def save_png(image: Image.Image | np.ndarray, path: PathLike, overwrite: bool = True) -> Path:
    """Write a PNG atomically (temporary file, then rename). Refuses to replace a file unless `overwrite`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), overwrite=overwrite)


#: Images bundled with scikit-image (the optional extra `photos`), in the order `sample_photos` gives them: eight
#: photographs, then a synthetic colour wheel. examples/photo_crops.py cuts the guide's training crops from these.
SAMPLE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
)


def sample_photos(n: int | None = None, size: int | None = None) -> list[np.ndarray]:
    """The first `n` (default: all) of SAMPLE_PHOTOS as uint8 (H, W, 3), centre-cropped to `size` x `size` when
    given: real photos for examples, tests and benchmarks. Needs scikit-image (`pip install "vdvae-zoo[photos]"`)."""
    try:
        import skimage.data
    except ImportError:
        raise ImportError('sample_photos needs scikit-image: pip install "vdvae-zoo[photos]"') from None
    photos = [getattr(skimage.data, name)()[..., :3] for name in SAMPLE_PHOTOS[:n]]
    return [center_crop_resize(p, size) if size else p for p in photos]


def photo_crops(
    n: int, size: int, seed: int = 0, side: int | None = None, photos: int | None = None
) -> list[np.ndarray]:
    """n square crops of the sample photos (the first `photos` of them, default all, in turn), each resized to
    `size` x `size` (bicubic), uint8 (size, size, 3): real but small images to train and test on. Crops are `side`
    pixels at random places, or (side=None) of a random side between 2 x size and half the photo."""
    rng = np.random.default_rng(seed)
    images, out = sample_photos(photos), []
    for k in range(n):
        p = images[k % len(images)]
        h, w = p.shape[:2]
        if side is None:
            s = int(rng.integers(size * 2, min(h, w) // 2 + 1))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        else:
            s, y, x = side, int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        out.append(np.asarray(Image.fromarray(p[y : y + s, x : x + s]).resize((size, size), Image.Resampling.BICUBIC)))
    return out
