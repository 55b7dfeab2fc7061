"""A Hugging Face Space's entry point: the vdvae-zoo demo page for one model.

Space files: this app.py, and requirements.txt with the line `vdvae-zoo[demo]` (or a git URL of this repository
with `[demo]`). The model: set the Space variable VDVAE_MODEL (a released name such as ffhq256, or a Hub id
owner/name); a CPU Space runs the small models, a GPU Space any.

Locally: python examples/app.py (the same as `vdvae-zoo demo MODEL`).
"""

import os

import vdvae_zoo
from vdvae_zoo.demo import build

model = vdvae_zoo.load(os.environ.get("VDVAE_MODEL", "cifar10"))
demo = build(model)  # Spaces look for a Blocks called `demo`

if __name__ == "__main__":
    demo.queue().launch(server_name=os.environ.get("HOST", "127.0.0.1"))
