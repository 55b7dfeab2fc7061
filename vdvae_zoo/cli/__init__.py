"""The `vdvae-zoo` command line: a thin layer over the Python API (parsing and printing only).

base.py holds the group and what commands share; each other module registers its commands on it.
"""

from . import coding, evaluation, models, pictures, quality, restoration, training  # noqa: F401  (they register their commands on `main`)
from .base import main, parse_temperature, user_errors

__all__ = ["main", "parse_temperature", "user_errors"]
