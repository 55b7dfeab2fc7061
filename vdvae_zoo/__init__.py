"""vdvae-zoo: Very Deep VAEs (Child, 2021) to sample, evaluate and fine-tune.

>>> import vdvae_zoo
>>> model = vdvae_zoo.load("cifar10")             # released weights, by name
>>> images = model.sample(4, temperature=0.8)     # uint8 (4, 32, 32, 3)
>>> model.likelihood(images).bpd                  # bits per dim per image
"""

from .config import VDVAEConfig, list_models as list_presets, parse_block_string
from .model import VDVAE, EncoderMismatchError, LikelihoodResult
from .hub import (IntegrityError, Manifest, UnknownModelError, convert_original, download, load, load_manifest,
                  read_checkpoint, save_pretrained)
from .plots import bits_per_layer, bits_per_resolution, kl_chart
from .perf import keep_freed_memory

from .train import TrainOptions, Trainer, finetune

__version__ = "0.1.0"


def list_models() -> list:
    """Names of the released models that `load(name)` accepts (from the manifest), aliases included."""
    return load_manifest().names


__all__ = ["VDVAE", "VDVAEConfig", "LikelihoodResult", "EncoderMismatchError", "IntegrityError", "UnknownModelError",
           "Manifest", "load", "download", "load_manifest", "read_checkpoint", "save_pretrained", "convert_original",
           "list_models", "list_presets", "parse_block_string", "Trainer", "TrainOptions", "finetune",
           "bits_per_layer", "bits_per_resolution", "kl_chart", "keep_freed_memory", "__version__"]
