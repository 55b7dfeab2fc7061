"""The state files of a resumable scoring run (scoring.py): a JSON header naming the model, the data and the
options, then one JSON line per finished chunk. Reading them back checks every record against the run that
resumes (a damaged or foreign file is an error naming the file and line); a torn last line is dropped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..compute import distributed
from ..data.files import open_user_file, read_small_text, refuse_existing

__all__ = ["StateError", "read_state", "recorded_pass_size", "state_files", "refuse_existing_state"]


class StateError(ValueError):
    """A state file of an interrupted run that cannot be continued (another run's, or damaged)."""


def _state_error(path: Path, line: int, what: str) -> StateError:
    return StateError(
        f"{path}, line {line}: {what}; start again with --overwrite instead of --resume (or delete the file)"
    )


def _check_record(
    record: Any, path: Path, line: int, chunks: list[np.ndarray], columns: list[str], num_layers: int
) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise _state_error(path, line, "a chunk record must be a JSON object")
    k = record.get("chunk")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(chunks):
        raise _state_error(path, line, f"chunk {k!r} is not one of this run's chunks 0..{len(chunks) - 1}")
    index, skipped = record.get("index"), record.get("skipped", [])
    if (
        not isinstance(index, list)
        or not isinstance(skipped, list)
        or not all(isinstance(s, list) and len(s) == 2 for s in skipped)
    ):
        raise _state_error(path, line, "index and skipped must be lists")
    expected = chunks[k].tolist()
    if sorted(index + [s[0] for s in skipped]) != sorted(expected) or index != sorted(index):
        raise _state_error(path, line, f"chunk {k} lists other images than this run's chunk {k}")
    for name in columns:
        values = record.get(name)
        if (
            not isinstance(values, list)
            or len(values) != len(index)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            raise _state_error(path, line, f"{name} must hold one finite number per image ({len(index)})")
        if not name.startswith("llr_") and any(v < -1e-4 for v in values):  # bounds and parts are >= 0 (+ rounding)
            raise _state_error(path, line, f"{name} holds a negative number of bits per dim")
    kl = record.get("kl_sum_nats")
    if (
        not isinstance(kl, list)
        or len(kl) != num_layers
        or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= -1e-4 for v in kl)
    ):
        raise _state_error(path, line, f"kl_sum_nats must hold one number per decoder layer ({num_layers})")
    return record


def read_state(
    paths: list[Path], header: dict[str, Any], chunks: list[np.ndarray], columns: list[str], num_layers: int
) -> dict[int, dict[str, Any]]:
    """The finished chunks recorded in `paths`. A torn last line (a process killed while appending) is dropped;
    anything else that does not fit this run is an error naming the file and line."""
    done: dict[int, dict[str, Any]] = {}
    for path in paths:
        try:
            lines = [line for line in read_small_text(path, what="state file").split("\n")]
        except (OSError, ValueError) as e:
            raise StateError(f"cannot read the state file {path}: {e}") from None
        while lines and not lines[-1].strip():
            lines.pop()
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                if number == len(lines) and number > 1:  # torn while appending: that chunk is scored again
                    break
                raise _state_error(path, number, "not a JSON line") from None
        if not records:
            continue
        first = records[0]
        if not isinstance(first, dict):
            raise _state_error(path, 1, "the header must be a JSON object")
        differing = _differences(first, header)
        if differing:
            raise StateError(
                f"{path} holds the progress of another run (differing: {', '.join(differing)}); "
                "resume with the same model, data and options, or start again with --overwrite "
                "instead of --resume"
            )
        for number, record in enumerate(records[1:], start=2):
            record = _check_record(record, path, number, chunks, columns, num_layers)
            done[record["chunk"]] = record
    return done


def _differences(saved: dict[str, Any], header: dict[str, Any]) -> list[str]:
    """What differs between a state file's header and this run's, options named one by one (`--seed 0 -> 1`)."""
    out = []
    for key, value in header.items():
        old = saved.get(key)
        if old == value:
            continue
        if key == "options" and isinstance(old, dict):
            out += [f"--{k.replace('_', '-')} {old.get(k)!r} -> {v!r}" for k, v in value.items() if old.get(k) != v]
        else:
            out.append(key)
    return out


def recorded_pass_size(paths: list[Path], header: dict[str, Any]) -> int | None:
    """The pass size (--batch-size) of the run a state file holds, when that is all that differs from this run's
    header: the resumed run keeps it, since a score depends on the pass's shape (module docstring)."""
    try:
        with open_user_file(paths[0], what="state file") as f:
            saved = json.loads(f.readline())
        saved_options = saved["options"]
        recorded = saved_options["batch_size"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if recorded == header["options"].get("batch_size") or not (
        recorded is None or (isinstance(recorded, int) and recorded > 0)
    ):
        return None
    same = dict(header, options=dict(header["options"], batch_size=recorded))
    return recorded if not _differences(saved, same) else None


def state_files(state: Path) -> list[Path]:
    return sorted(
        p
        for p in state.parent.glob(state.name + "*")
        if p.name == state.name or p.name.startswith(state.name + ".rank")
    )


def refuse_existing_state(state: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Before any work: an existing state file without --resume is refused (unless --overwrite). Under torchrun
    `score_dataset` checks instead, once every process is there (another process may already be writing)."""
    path = Path(state)
    if distributed.launched_world()[0] > 1:
        return
    if not resume and path.parent.is_dir() and state_files(path):
        refuse_existing(state_files(path)[0], overwrite, "--resume continues it, --overwrite starts again")
