"""Model families by `model_type`, the field every config.json carries (timm's registry and transformers'
`model_type`, in small).

A family is a model class that inherits `PretrainedMixin` and sets its hooks (pretrained.py). It registers
itself with `@register` where it is defined; the loaders then reach it from a config's `model_type` and never
import it. A config.json without `model_type` (written before the field existed) belongs to the first family
registered, VDVAE. Adding a family means adding its files, not editing the loaders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

__all__ = ["register", "family", "families", "model_type_of", "UnknownModelTypeError"]

T = TypeVar("T", bound=type)
_FAMILIES: dict[str, type] = {}


class UnknownModelTypeError(ValueError):
    """A config names a model_type that no registered family has."""


def register(cls: T) -> T:
    """Class decorator: make `cls` the family of configs whose model_type is `cls.model_type`."""
    name = getattr(cls, "model_type", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a model_type (a non-empty string) to be registered")
    if _FAMILIES.get(name, cls) is not cls:
        raise ValueError(f"model_type {name!r} is already registered by {_FAMILIES[name].__name__}")
    _FAMILIES[name] = cls
    return cls


def families() -> list[str]:
    """The registered model types, the default (for configs without model_type) first."""
    return list(_FAMILIES)


def family(model_type: str | None) -> type | None:
    """The class registered for `model_type` (None: the default family); None when nothing is registered yet.
    An unknown model_type is an UnknownModelTypeError naming the known ones."""
    if not _FAMILIES:
        return None
    if model_type is None:
        return next(iter(_FAMILIES.values()))
    if model_type not in _FAMILIES:
        shown = (
            repr(model_type)
            if len(str(model_type)) <= 60
            else repr(str(model_type)[:60]) + f"... ({len(str(model_type)):,} characters)"
        )
        raise UnknownModelTypeError(
            f"model_type {shown} is not a model family this vdvae-zoo knows "
            f"({', '.join(_FAMILIES)}); upgrade vdvae-zoo, or check the config.json"
        )
    return _FAMILIES[model_type]


def model_type_of(config_file: Path) -> str | None:
    """The model_type a config.json states (None when it states none or cannot be read: its reader says why)."""
    from ..data.files import read_small_text

    try:
        value = json.loads(read_small_text(config_file, what="config file")).get("model_type")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None
