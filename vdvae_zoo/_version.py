"""The version of vdvae-zoo: the one statement of it (pyproject.toml reads it from here)."""

__version__ = "0.1.0"
