"""torch.hub entry point: `torch.hub.load("<owner>/vdvae-zoo", "vdvae", name="cifar10")`, or with
`source="local"` and a clone's path. A thin call to `vdvae_zoo.load`; the package's dependencies must be
installed (`pip install -e .` in the clone, or `pip install vdvae-zoo`)."""

dependencies = ["torch", "huggingface_hub", "safetensors", "numpy", "PIL", "click"]


def vdvae(name: str = "cifar10", **kwargs):
    """A Very Deep VAE: a released name (cifar10, imagenet32, imagenet64, ffhq256, ffhq1024), a model folder, a
    weights file or a Hub repository id; keyword arguments go to `vdvae_zoo.load` (device=, dtype=, config=, ...)."""
    import os

    from vdvae_zoo import load

    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ValueError(
            f"name must be a released model name (cifar10, imagenet32, imagenet64, ffhq256, ffhq1024), "
            f"a model folder, a weights file or a Hub repository id; got {name!r}"
        )
    return load(name, **kwargs)
