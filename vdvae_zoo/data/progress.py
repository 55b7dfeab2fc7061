"""Progress bars: the one place that decides where they go and when they show.

A bar goes to standard error, and only when standard error is a terminal (tqdm's `disable=None` rule), so
that output piped into a file or another program holds result lines only. `HF_HUB_DISABLE_PROGRESS_BARS=1`
turns them all off (huggingface_hub's tqdm, which this uses).
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(*, enabled: bool = True, **kwargs: Any):
    """A tqdm bar (same arguments) on stderr, shown when `enabled` and stderr is a terminal."""
    from huggingface_hub.utils import tqdm

    return tqdm(file=sys.stderr, disable=None if enabled else True, **kwargs)
