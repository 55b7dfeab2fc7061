"""A page to explore a model's hierarchy (`pip install "vdvae-zoo[demo]"`): `vdvae-zoo demo MODEL`, or
`build(model)` for a Hugging Face Space (examples/app.py).

Each tab is one call of the library, the same call the command line makes:
- Sample: `sample_grid` (what `vdvae-zoo sample -n N -t R:T,... --seed S -o grid.png` writes), one temperature
  slider per resolution, and one that moves them all;
- Reconstruct: `model.reconstruct(keep=[1, 4, 16, ..., all])`, the paper's Figure 4 row, and a keep-k slider;
- Interpolate: `model.interpolate(a, b, steps, keep=k)`;
- Restore: `restore.restore` with a painted mask (inpainting), an upscale or a denoise; with samples, the spread;
- Score: `scoring.engine.score_images` (what `vdvae-zoo bpd FILES --seed S` prints): bpd, distortion, rate, the
  per-layer KL chart, and the likelihood ratios LLR^{>k} of `vdvae-zoo ood`.

Uploads are read as the command line reads files (the model's channels; another size is centre-cropped and resized
as `--resize center-crop` does, and the page says so). A file that is not an image is one message and the page keeps
working. Uploads stay in a temporary folder removed at exit. The page binds 127.0.0.1 and never shares a public link
unless asked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.images import ImageReadError, center_crop_resize, make_grid, read_image
from .data.plots import kl_chart
from .generation import sample_grid
from .restore import Denoising, Downsampling, Inpainting, restore
from .scoring.engine import ScoreOptions, score_images

__all__ = ["build", "launch", "INSTALL", "figure4_keeps"]

INSTALL = 'pip install "vdvae-zoo[demo]"'
MAX_UPLOADS = 16  # images per Score call
MAX_SAMPLES = 64


def _gradio() -> Any:
    try:
        import gradio
    except ImportError as e:
        raise ImportError(f"the demo needs Gradio: {INSTALL} ({e})") from None
    return gradio


def figure4_keeps(num_layers: int) -> list[int]:
    """1, 4, 16, ... (powers of 4 below the number of layers), then all: the paper's Figure 4 row."""
    keeps, k = [], 1
    while k < num_layers:
        keeps.append(k)
        k *= 4
    return keeps + [num_layers]


class _Page:
    """The model and the calls each tab makes; errors become one message on the page (gr.Error)."""

    def __init__(self, model):
        self.model = model
        self.size, self.channels = model.config.image_size, model.config.image_channels
        self.resolutions = sorted(set(model.layer_resolutions))

    def fail(self, message: str) -> Exception:
        return _gradio().Error(message)

    def read(self, path: Any, what: str = "image") -> tuple[np.ndarray, str]:
        """An upload as the model sees it, and a note when it was centre-cropped and resized."""
        if path is None:
            raise self.fail(f"upload an {what} first")
        path = getattr(path, "name", path)
        try:
            image = read_image(path, channels=self.channels)
        except ImageReadError as e:
            raise self.fail(f"{Path(path).name} cannot be used: {e.reason}") from None
        note = ""
        if image.shape[:2] != (self.size, self.size):
            h, w = image.shape[:2]
            note = f"{Path(path).name} is {w}x{h}: centre-cropped and resized to {self.size}x{self.size}"
            note += " (as --resize center-crop does)"
            image = center_crop_resize(image, self.size)
        return image, note

    def show(self, images: np.ndarray, ncols: int | None = None) -> Image.Image:
        return make_grid(images, ncols=ncols, zoom=None)

    # ---------------------------------------------------------------------------------------------- tabs
    def sample(self, n: float, seed: float, *temperatures: float) -> Image.Image:
        schedule = {r: float(t) for r, t in zip(self.resolutions, temperatures, strict=True)}
        return sample_grid(self.model, int(n), schedule, int(seed))

    def reconstruct(self, path: Any, keep: float, seed: float) -> tuple[Image.Image, Image.Image, str]:
        image, note = self.read(path)
        keeps = figure4_keeps(self.model.num_layers)
        row = self.model.reconstruct(image[None], keep=keeps, generator=torch.Generator().manual_seed(int(seed)))
        one = self.model.reconstruct(image[None], keep=int(keep), generator=torch.Generator().manual_seed(int(seed)))
        caption = "keep " + ", ".join(str(k) for k in keeps) + f" of {self.model.num_layers} layers. " + note
        return self.show(row[0].numpy(), ncols=len(keeps)), self.show(one.numpy()), caption.strip()

    def interpolate(self, a: Any, b: Any, steps: float, keep: float, seed: float) -> tuple[Image.Image, str]:
        (first, note_a), (second, note_b) = self.read(a, "image A"), self.read(b, "image B")
        path = self.model.interpolate(
            first, second, int(steps), keep=int(keep), generator=torch.Generator().manual_seed(int(seed))
        )
        return self.show(path.numpy(), ncols=int(steps)), " ".join(n for n in (note_a, note_b) if n)

    def restore(
        self, editor: Any, task: str, factor: float, noise: float, samples: float, seed: float
    ) -> tuple[Image.Image, Image.Image | None, Image.Image | None, str]:
        if editor is None or editor.get("background") is None:
            raise self.fail("upload an image first")
        background = np.asarray(editor["background"])
        image = _channels(background, self.channels)
        note = ""
        small = self.size // int(factor)
        if task == "upscale" and image.shape[:2] == (small, small) and self.size % int(factor) == 0:
            operator: Any = Downsampling(int(factor))  # a small image: upscaled as it is
            result = restore(self.model, image[None], operator, samples=int(samples), seed=int(seed))
            return self._restored(result, None, f"{small}x{small} upscaled x{int(factor)}. ")
        if image.shape[:2] != (self.size, self.size):
            note = f"the image was centre-cropped and resized to {self.size}x{self.size} (--resize center-crop). "
            image = center_crop_resize(image, self.size)
        mask_image = None
        if task == "inpaint (paint the missing region)":
            painted = _painted(background, editor.get("composite"))
            if not painted.any():
                raise self.fail("paint the missing region with the brush first")
            observed = ~_resize_mask(painted, background.shape[:2], self.size)
            mask = torch.tensor(observed.astype(np.float32))
            operator = Inpainting(mask)
            y = image * observed[..., None]
            mask_image = Image.fromarray((observed * 255).astype(np.uint8))
        elif task == "upscale":
            factor = int(factor)
            if self.size % factor:
                raise self.fail(f"{factor} does not divide the model's size {self.size}")
            operator = Downsampling(factor)
            y = (operator.forward(torch.tensor(image).float()[None] / 255)[0] * 255).round().byte().numpy()
            note += f"the image was reduced x{factor} first, to show super-resolution (upload a {self.size // factor}"
            note += f"x{self.size // factor} image to upscale it as it is). "
        else:
            operator = Denoising(float(noise) / 255)  # the upload is taken as holding noise of this level
            y = image
        result = restore(self.model, y[None], operator, samples=int(samples), seed=int(seed))
        return self._restored(result, mask_image, note)

    def _restored(
        self, result: Any, mask_image: Image.Image | None, note: str
    ) -> tuple[Image.Image, Image.Image | None, Image.Image | None, str]:
        spread = None
        if result.std is not None:
            std = result.std[0]
            top = float(std.max()) or 1.0
            spread = self.show((np.round(std / top * 255)).astype(np.uint8)[None])
            note += f"spread: white = {top * 255:.1f} levels of 255. "
        return self.show(result.images), mask_image, spread, note.strip()

    def score(self, files: Any, seed: float) -> tuple[list[list[Any]], Image.Image, str]:
        if not files:
            raise self.fail("upload one or more images first")
        files = list(files)[:MAX_UPLOADS]
        images, notes = [], []
        for f in files:
            image, note = self.read(f)
            images.append(image)
            notes.append(note)
        ks = tuple(k for k in (1, 2) if k < self.model.num_layers)
        values, kl = score_images(self.model, np.stack(images), range(len(images)), ScoreOptions(seed=int(seed), ks=ks))
        rows = []
        for i, f in enumerate(files):
            numbers = [values["bpd"][i], values["distortion_bpd"][i], values["rate_bpd"][i]]
            numbers += [values[f"llr_k{k}"][i] for k in ks]
            rows.append([Path(getattr(f, "name", f)).name, *(round(float(v), 4) for v in numbers)])  # as bpd prints
        charts = [
            kl_chart(kl[i], self.model.layer_resolutions, title=f"{row[0]}: bits in each layer (per image)")
            for i, row in enumerate(rows)
        ]
        stacked = Image.new("RGB", (charts[0].width, sum(c.height for c in charts)), "white")
        for i, c in enumerate(charts):  # one chart per image, one under the other
            stacked.paste(c, (0, i * c.height))
        return rows, stacked, " ".join(n for n in notes if n)


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An editor's RGB(A) array in the model's channels, as files are read (grey from luminance, alpha kept)."""
    from .data.images import as_channels

    image = np.asarray(image, np.uint8)
    return as_channels(image[..., None] if image.ndim == 2 else image, channels)


def _rgb(image: Any) -> np.ndarray:
    image = np.asarray(image, np.int16)
    image = image[..., None] if image.ndim == 2 else image
    return np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]


def _painted(background: np.ndarray, composite: Any) -> np.ndarray:
    """Where the brush changed the picture: the composite (background and strokes) differs from the background."""
    if composite is None:
        return np.zeros(background.shape[:2], bool)
    return np.any(_rgb(composite) != _rgb(background), axis=-1)


def _resize_mask(painted: np.ndarray, shape: tuple[int, ...], size: int) -> np.ndarray:
    """The painted region at the model's size, cropped and resized as the image was (any painted pixel counts)."""
    if painted.shape == (size, size):
        return painted
    grey = (painted * 255).astype(np.uint8)[..., None]
    return center_crop_resize(grey, size)[..., 0] > 0


def build(model, *, title: str | None = None) -> Any:
    """The page's Blocks for `model` (a VDVAE): launch it, or give it to a Space (examples/app.py)."""
    gr = _gradio()
    page = _Page(model)
    name = title or f"VDVAE: {model.config.image_size}x{model.config.image_size}, {model.num_layers} layers"
    with gr.Blocks(title=name) as blocks:
        gr.Markdown(f"# {name}\nTop layers fix the layout; lower layers add detail. Images of another size are "
                    f"centre-cropped and resized to {page.size}x{page.size}.")  # fmt: skip
        with gr.Tab("Sample"):
            with gr.Row():
                n = gr.Slider(1, MAX_SAMPLES, value=4, step=1, label="number")
                seed = gr.Number(value=0, precision=0, label="seed")
            all_t = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="temperature (all resolutions)")
            sliders = [
                gr.Slider(0.0, 1.5, value=1.0, step=0.05, label=f"temperature at {r}x{r}", elem_id=f"t{r}")
                for r in page.resolutions
            ]
            all_t.change(lambda t: [t] * len(sliders), inputs=all_t, outputs=sliders)
            go = gr.Button("Sample", variant="primary", elem_id="sample-button")
            out = gr.Image(label="samples", format="png", elem_id="sample-output")
            go.click(page.sample, inputs=[n, seed, *sliders], outputs=out)
        with gr.Tab("Reconstruct"):
            upload = gr.File(label="image", file_types=["image"], elem_id="reconstruct-file")
            keep = gr.Slider(0, model.num_layers, value=model.num_layers // 2, step=1, label="layers kept")
            rseed = gr.Number(value=0, precision=0, label="seed")
            go = gr.Button("Reconstruct", variant="primary")
            row, one = gr.Image(label="Figure 4: keep 1, 4, 16, ..., all", format="png"), gr.Image(format="png")
            note = gr.Markdown()
            go.click(page.reconstruct, inputs=[upload, keep, rseed], outputs=[row, one, note])
        with gr.Tab("Interpolate"):
            with gr.Row():
                a, b = gr.File(label="image A", file_types=["image"]), gr.File(label="image B", file_types=["image"])
            steps = gr.Slider(2, 16, value=8, step=1, label="steps")
            ikeep = gr.Slider(0, model.num_layers, value=model.num_layers, step=1, label="layers interpolated")
            iseed = gr.Number(value=0, precision=0, label="seed")
            go = gr.Button("Interpolate", variant="primary")
            path, inote = gr.Image(label="path", format="png"), gr.Markdown()
            go.click(page.interpolate, inputs=[a, b, steps, ikeep, iseed], outputs=[path, inote])
        with gr.Tab("Restore"):
            editor = gr.ImageEditor(
                label="image: paint the missing region",
                type="numpy",
                brush=gr.Brush(colors=["#ff0000"], color_mode="fixed", default_size=max(1, page.size // 12)),
                elem_id="restore-editor",
            )
            task = gr.Radio(
                ["inpaint (paint the missing region)", "upscale", "denoise"],
                value="inpaint (paint the missing region)",
                label="task",
            )
            with gr.Row():
                factor = gr.Slider(2, 8, value=2, step=1, label="upscale factor")
                noise = gr.Slider(1, 100, value=25, step=1, label="denoise: noise level (0..255)")
                samples = gr.Slider(1, 16, value=1, step=1, label="samples")
                sseed = gr.Number(value=0, precision=0, label="seed")
            go = gr.Button("Restore", variant="primary", elem_id="restore-button")
            with gr.Row():
                result = gr.Image(label="restored", format="png", elem_id="restore-output")
                mask_out = gr.Image(label="mask (white = observed)", format="png", elem_id="restore-mask")
                spread = gr.Image(label="per-pixel spread", format="png")
            snote = gr.Markdown()
            go.click(page.restore, inputs=[editor, task, factor, noise, samples, sseed],
                     outputs=[result, mask_out, spread, snote])  # fmt: skip
        with gr.Tab("Score"):
            files = gr.File(label="images", file_count="multiple", file_types=["image"], elem_id="score-files")
            cseed = gr.Number(value=0, precision=0, label="seed")
            go = gr.Button("Score", variant="primary", elem_id="score-button")
            ks = [k for k in (1, 2) if k < model.num_layers]
            table = gr.Dataframe(
                headers=["image", "bpd", "distortion", "rate"] + [f"LLR>{k}" for k in ks],
                label="bits per dim (bpd = distortion + rate); LLR>k: larger is more out-of-distribution",
                elem_id="score-table",
            )
            chart = gr.Image(label="KL per layer, each image", format="png", elem_id="score-charts")
            cnote = gr.Markdown()
            go.click(page.score, inputs=[files, cseed], outputs=[table, chart, cnote])
    return blocks


def launch(model, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> None:
    """Serve the page until Ctrl-C. Uploads go to a temporary folder that is removed at exit."""
    uploads = tempfile.mkdtemp(prefix="vdvae-zoo-demo-")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = uploads
    try:
        blocks = build(model)
        blocks.queue().launch(server_name=host, server_port=port, share=share, show_error=True)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(uploads, ignore_errors=True)
