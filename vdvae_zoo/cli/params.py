"""The command line's value types: the one place where numbers typed by a user are checked. Every command uses
them; no command re-checks a number by hand.

- `Real(low, high)`: a finite number in a documented range. NaN and infinity are refused, and so is anything
  beyond what float32 holds (the value reaches a tensor), at parse time, naming the option.
- `Count(low, high)`: a whole number with an upper bound: what a command can finish (images, draws, steps).
- `SEED`: a seed numpy's SeedSequence takes (0 .. 2^63 - 1).
"""

from __future__ import annotations

import math
import os
from typing import Any

import click

from ..nn.inputs import LinearTemperature

__all__ = [
    "Real",
    "Count",
    "SEED",
    "FLOAT32_MAX",
    "RealOrAuto",
    "MAX_DRAWS",
    "MAX_IMAGES",
    "MAX_TEMPERATURE",
    "TemperatureSchedule",
    "TEMPERATURE",
    "Readable",
    "Folder",
]

#: The largest float32: a number that reaches a tensor must stay below it.
FLOAT32_MAX = 3.4028234663852886e38
#: Posterior draws per image (--samples of bpd and eval): 10,000 already takes 10,000 passes per image.
MAX_DRAWS = 10_000
#: Images one command makes (sample -n): a sample set of 10 million is far beyond FID's 50,000.
MAX_IMAGES = 10_000_000
#: Temperatures (-t): the prior's standard deviation times this; 100 is already noise.
MAX_TEMPERATURE = 100.0


def _finite(text: Any, param: click.Parameter | None, ctx: click.Context | None, fail) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        fail(f"{text!r} is not a number", param, ctx)
    if not math.isfinite(value):
        fail(f"{text!r} is not a finite number (NaN and infinity mean nothing here)", param, ctx)
    return value


class Real(click.FloatRange):
    """A finite number in [low, high] (open at either end when asked); high defaults to float32's largest."""

    name = "number"

    def __init__(
        self,
        low: float | None = None,
        high: float | None = FLOAT32_MAX,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        super().__init__(min=low, max=high, min_open=low_open, max_open=high_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(_finite(value, param, ctx, self.fail), param, ctx)


class RealOrAuto(click.ParamType):
    """A finite number (as `Real`) or one of `words` (default: auto)."""

    def __init__(
        self,
        low: float | None = None,
        high: float | None = FLOAT32_MAX,
        words: tuple[str, ...] = ("auto",),
        low_open: bool = False,
    ) -> None:
        self.real, self.words = Real(low, high, low_open=low_open), words
        self.name = "NUMBER|" + "|".join(words)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or value in self.words:
            return value
        try:
            float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor {' nor '.join(self.words)}", param, ctx)
        return self.real.convert(value, param, ctx)


class Count(click.IntRange):
    """A whole number in [low, high]: `high` is what the command can finish, stated in its help."""

    name = "integer"

    def __init__(self, low: int = 1, high: int = 2**31 - 1) -> None:
        super().__init__(min=low, max=high)


class TemperatureSchedule(click.ParamType):
    """-t: one temperature (0.8), one per layer (1.0,0.9,...), resolution:temperature pairs (1:1.0,4:0.9), or a
    linear schedule from the first layer to the last (0.3..0.8), each a finite number from 0 to MAX_TEMPERATURE.
    Converts to a float, a list, a {resolution: t} dict, or a LinearTemperature."""

    name = "temperature"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float, list, dict, LinearTemperature)) and not isinstance(value, bool):
            return value
        text = str(value)
        try:
            if ".." in text:
                values = [float(v) for v in text.split("..")]
                if len(values) != 2:
                    raise ValueError(text)
            elif ":" in text:
                schedule = {int(k): float(v) for k, v in (item.split(":") for item in text.split(","))}
                values = list(schedule.values())
            else:
                values = [float(v) for v in text.split(",")]
        except (ValueError, OverflowError):
            self.fail(
                f"{text!r} is not a number, a comma-separated list of numbers (one per layer), a list of "
                "resolution:temperature pairs or a linear schedule TOP..BOTTOM (0.3..0.8)",
                param,
                ctx,
            )
        if not all(0.0 <= v <= MAX_TEMPERATURE for v in values):  # NaN fails this too
            self.fail(f"{text!r}: temperatures must be finite numbers from 0 to {MAX_TEMPERATURE:g}", param, ctx)
        if ".." in text:
            return LinearTemperature(values[0], values[1])
        if ":" in text:
            return schedule
        return values[0] if len(values) == 1 else values


TEMPERATURE = TemperatureSchedule()
#: What a -t value may be, for the help of every option of type TEMPERATURE.
TEMPERATURE_FORMS = (
    "one number, one per layer (comma-separated), resolution:t pairs such as 1:1.0,4:0.9,32:0.6, or a linear "
    "schedule from the top layer to the bottom one such as 0.3..0.8"
)


class Readable(click.Path):
    """A file (or, where `dir_okay`, a folder) the command reads. Checked when parsed, whether or not the command
    then needs it, through data/files.open_user_file: a FIFO, a device, a dangling link or a missing file is one
    sentence naming the option."""

    def __init__(self, *, dir_okay: bool = False) -> None:
        super().__init__(exists=True, dir_okay=dir_okay, file_okay=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..data.files import check_user_file

        path = super().convert(value, param, ctx)
        if not os.path.isdir(path):
            try:
                check_user_file(os.fsdecode(path), what="file", kind="weights")
            except (OSError, ValueError) as e:
                self.fail(str(e), param, ctx)
        return path


class Folder(click.Path):
    """A folder the command writes into: missing (it is made) or a directory; anything else that exists there (a
    file, a FIFO, a device, a dangling link) is refused when parsed."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, dir_okay=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        if (os.path.lexists(path)) and not os.path.isdir(path):
            self.fail(
                f"{os.fsdecode(path)!r} exists and is not a folder; give a folder (or a name to make)", param, ctx
            )
        return path


#: A seed: numpy's SeedSequence takes non-negative integers; image i of a run draws with image_seed(seed, i).
SEED = click.IntRange(0, 2**63 - 1)
