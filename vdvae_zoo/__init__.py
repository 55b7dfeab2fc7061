"""vdvae-zoo: Very Deep VAEs (Child, 2021) to sample, evaluate and fine-tune.

>>> import vdvae_zoo
>>> model = vdvae_zoo.load("cifar10")             # released weights, by name
>>> images = model.sample(4, temperature=0.8)     # uint8 (4, 32, 32, 3)
>>> model.likelihood(images).bpd                  # bits per dim per image

The wings, top floor first (each imports only from its own wing and the floors below; README, "Architecture"):
cli -> demo -> training, restore -> model -> scoring, coding, latents -> weights -> compute -> nn -> config -> data.
"""

from ._version import __version__
from .blocks import parse_block_string
from .coding.archive import compress, decompress
from .config import VDVAEConfig, list_presets
from .data.plots import bits_per_layer, bits_per_resolution, kl_chart
from .factory import list_models, load
from .latents import flatten_latents, latent_layout, unflatten_latents
from .model import VDVAE, EncoderMismatchError, LayerLatents, LikelihoodResult
from .nn.runtime import keep_freed_memory
from .restore import Denoising, Downsampling, Inpainting, RestoreResult, restore
from .scoring.engine import ScoreOptions, score_dataset
from .scoring.evaluate import EvalReport, evaluate
from .scoring.fid import fid
from .scoring.ood import detection_metrics, evaluate_ood, ood_scores
from .scoring.sample_sets import write_sample_set
from .training.trainer import Trainer, TrainOptions, finetune
from .weights.hub import IntegrityError
from .weights.inspection import inspect_checkpoint
from .weights.manifest import Manifest, UnknownModelError, load_manifest
from .weights.original import LoadReport, read_checkpoint
from .weights.provenance import Provenance

download = VDVAE.download
convert_original = VDVAE.convert_original


__all__ = [
    "VDVAE",
    "VDVAEConfig",
    "LikelihoodResult",
    "LayerLatents",
    "LoadReport",
    "Provenance",
    "flatten_latents",
    "unflatten_latents",
    "latent_layout",
    "ood_scores",
    "evaluate_ood",
    "detection_metrics",
    "write_sample_set",
    "fid",
    "ScoreOptions",
    "score_dataset",
    "EncoderMismatchError",
    "IntegrityError",
    "UnknownModelError",
    "Manifest",
    "load",
    "download",
    "load_manifest",
    "read_checkpoint",
    "convert_original",
    "inspect_checkpoint",
    "evaluate",
    "EvalReport",
    "compress",
    "decompress",
    "list_models",
    "list_presets",
    "parse_block_string",
    "Trainer",
    "TrainOptions",
    "finetune",
    "bits_per_layer",
    "bits_per_resolution",
    "kl_chart",
    "keep_freed_memory",
    "restore",
    "RestoreResult",
    "Inpainting",
    "Downsampling",
    "Denoising",
    "__version__",
]
