"""Model cards: the README.md with YAML front matter that a model folder and the Hub carry.

`model_card` writes a new card. `merge_card_result` puts one measured result into an existing card and keeps every
other line of it: the user's title, sections and front-matter keys stay as they were, byte for byte; only the
`model-index:` block of the front matter and the results table this package generates are rewritten. A README
that is not a model card (no front matter) is changed only when asked (`overwrite=True`), and then its text is
kept below the new front matter. Results already in a card are checked before anything is written: a malformed
one is refused with a sentence naming the field (`CardError`), never dropped or rewritten.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ..config import VDVAEConfig
from .manifest import ModelEntry

__all__ = [
    "CardError",
    "PAPER_SOURCE",
    "PROJECT_URL",
    "measured_result",
    "model_card",
    "card_results",
    "merge_card_result",
    "check_card",
    "add_card_result",
]

#: The project, named as the source of the numbers it measured (a model-index source needs a URL).
PROJECT_URL = "https://github.com/vdvae-zoo/vdvae-zoo"
#: Where the released models' reported numbers come from: quoted in the cards, never measured by us.
PAPER_SOURCE = {
    "name": "Child (2021), Very Deep VAEs, ICLR: the paper's reported number, quoted (not measured by vdvae-zoo)",
    "url": "https://arxiv.org/abs/2011.10650",
}
#: The header of the results table `model_card` writes; a table with this header is regenerated on a merge.
_TABLE_HEADER = "| dataset | split | metric | value | source |"
_TABLE_RULE = "| --- | --- | --- | ---: | --- |"
_FRONT = re.compile(r"\A(---[ \t]*\r?\n)(.*?\r?\n)?(---[ \t]*(?:\r?\n|\Z))", re.S)
_TOP_LEVEL_KEY = re.compile(r"^[^\s#-][^:]*:")


class CardError(ValueError):
    """A model card that cannot be merged without losing or inventing text: the sentence names file and field."""


def measured_result(
    dataset: str,
    split: str,
    value: float,
    *,
    metric: str = "bpd",
    metric_name: str = "bits per dim (negative ELBO)",
    args: Mapping[str, Any] | None = None,
    command: str = "",
    task: str = "density-estimation",
) -> dict[str, Any]:
    """One model-index result that vdvae-zoo measured: the dataset and split, the value, the options that
    determine it (`args`: seed, samples, limit, ...), and as its source the command and the vdvae-zoo version."""
    from .._version import __version__

    return {
        "task": {"type": task},
        "dataset": {"name": dataset, "type": dataset, "split": split},
        "metrics": [
            {"type": metric, "name": f"{metric_name} (measured)", "value": float(value), "args": dict(args or {})}
        ],
        "source": {"name": f"measured with vdvae-zoo {__version__}: {command}".strip(": "), "url": PROJECT_URL},
    }


def _paper_result(entry: ModelEntry) -> dict[str, Any]:
    return {
        "task": {"type": "density-estimation"},
        "dataset": {"name": entry.dataset, "type": entry.dataset, "split": "test"},
        "metrics": [{"type": "bpd", "name": "test bits per dim (reported)", "value": entry.reported_test_bpd}],
        "source": dict(PAPER_SOURCE),
    }


def _results_table(index: list[dict[str, Any]]) -> list[str]:
    return [_TABLE_HEADER, _TABLE_RULE] + [
        f"| {r['dataset']['name']} | {r['dataset'].get('split', '')} | "
        f"{r['metrics'][0].get('name', r['metrics'][0]['type'])} | "
        f"{r['metrics'][0]['value']:.4g} | {r.get('source', {}).get('name', '')} |"
        for r in index
    ]


def model_card(
    config: VDVAEConfig,
    lines: list[str],
    entry: ModelEntry | None = None,
    repo_id: str | None = None,
    run: Mapping[str, Any] | None = None,
    results: list[dict[str, Any]] | None = None,
) -> str:
    """A new Hugging Face model card (README.md with YAML metadata): the family's description `lines`, what the
    manifest `entry` or a training `run` knows (base_model, data, steps, val_bpd, ...), how to load it and the
    architecture. Its `model-index` holds the paper's number for a released entry (quoted, with the paper as its
    source) and every measured `results` entry (`measured_result`: vdvae-zoo and the command as its source)."""
    import yaml

    run = dict(run or {})
    name = entry.name if entry else (run.get("title") or repo_id or config.model_type)
    front: dict[str, Any] = {
        "library_name": "vdvae-zoo",
        "license": (entry.license if entry else "mit").lower(),
        "tags": [config.model_type, "vae", "image-generation", "likelihood"],
    }
    if run.get("base_model"):
        front["base_model"] = run["base_model"]
    if entry:
        front["datasets"] = [entry.dataset]
    index = ([_paper_result(entry)] if entry and entry.reported_test_bpd is not None else []) + list(results or [])
    if index:
        front["model-index"] = [{"name": name, "results": index}]
    meta = ["---", yaml.safe_dump(front, sort_keys=False).rstrip("\n"), "---"]
    body = [f"# {name}", "", *lines, ""]
    if entry:
        body += [
            f"- Dataset: {entry.dataset}, {entry.resolution}x{entry.resolution}, {entry.bits}-bit targets",
            f"- Parameters: {entry.parameters:,}",
            f"- Reported test bits per dim (ELBO): {entry.reported_test_bpd}",
            f"- Source: converted without change from the authors' checkpoint {entry.source.get('url')}"
            + (f" (sha256 {entry.source['sha256']})" if entry.source.get("sha256") else ""),
            f"- Licence: {entry.license}",
        ]
        if not entry.encoder_verified:
            body.append(
                "- Note: the encoder of this file has not been verified against the published "
                "hyper-parameters; sampling uses only the decoder."
            )
        body.append("")
    if run:
        body += ["## Training", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in run.items() if k != "title"] + [""]
    if index:
        body += ["## Results", "", *_results_table(index), ""]
    load_name = entry.name if entry else (repo_id or "path/to/this/folder")
    shape = f"(4, {config.image_size}, {config.image_size}, {config.image_channels})"
    body += [
        "## Use",
        "",
        "```python",
        "import vdvae_zoo",
        f'model = vdvae_zoo.load("{load_name}")',
        f"images = model.sample(4, temperature=0.8)     # uint8 {shape}",
        "print(model.likelihood(images).bpd)           # bits per dim",
        "```",
        "",
        "## Architecture",
        "",
        "```json",
        config.to_json(),
        "```",
        "",
    ]
    return "\n".join(meta + [""] + body)


# ----------------------------------------------------------------------------------------- reading a card
def _split_front_matter(text: str, where: Path) -> tuple[str | None, tuple[str, str], str]:
    """(the front matter's YAML text, or None when there is none; its opening and closing '---' lines; the body)."""
    if not text.startswith("---"):
        return None, ("", ""), text
    match = _FRONT.match(text)
    if not match:
        raise CardError(
            f"{where}: its front matter opens with '---' but never closes with a '---' line; close it "
            "(or remove the opening line), then run again"
        )
    return match.group(2) or "", (match.group(1), match.group(3)), text[match.end() :]


def _front_matter(text: str, where: Path) -> dict[str, Any]:
    import yaml

    try:
        front = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 2} of the file)" if mark is not None else ""
        raise CardError(
            f"{where}: its front matter is not valid YAML{line}; correct it, then run again (nothing was written)"
        ) from None
    if front is None:
        return {}
    if not isinstance(front, dict):
        raise CardError(
            f"{where}: its front matter is a {type(front).__name__}, not a mapping of keys; correct it, "
            "then run again (nothing was written)"
        )
    return front


def _checked_results(front: Mapping[str, Any], where: Path) -> list[dict[str, Any]]:
    """The results of the front matter's model-index, each checked for the fields this package reads."""
    index = front.get("model-index")
    if index is None:
        return []

    def bad(field: str, must: str, value: Any) -> CardError:
        return CardError(
            f"{where}: model-index {field} must be {must} (it is {json.dumps(value, default=str)[:80]}); "
            "correct or remove that entry, then run again (nothing was written)"
        )

    if not isinstance(index, list) or not index or not isinstance(index[0], dict):
        raise bad("", "a list holding one mapping with name and results", index)
    results = index[0].get("results", [])
    if not isinstance(results, list):
        raise bad("[0].results", "a list", results)
    for i, r in enumerate(results):
        at = f"[0].results[{i}]"
        if not isinstance(r, dict):
            raise bad(at, "a mapping", r)
        if not isinstance(r.get("dataset"), dict) or not r["dataset"].get("name"):
            raise bad(f"{at}.dataset", "a mapping with a name", r.get("dataset"))
        metrics = r.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            raise bad(f"{at}.metrics", "a non-empty list", metrics)
        for j, m in enumerate(metrics):
            if (
                not isinstance(m, dict)
                or not m.get("type")
                or isinstance(m.get("value"), bool)
                or not isinstance(m.get("value"), (int, float))
            ):
                raise bad(f"{at}.metrics[{j}]", "a mapping with a type and a numeric value", m)
            if "args" in m and not isinstance(m["args"], dict):
                raise bad(f"{at}.metrics[{j}].args", "a mapping", m["args"])
        if "source" in r and (not isinstance(r["source"], dict) or not r["source"].get("name")):
            raise bad(f"{at}.source", "a mapping with a name (and url)", r["source"])
    return results


def _read_card(card_file: Path) -> tuple[str | None, tuple[str, str], str, list[dict[str, Any]]]:
    from ..data.files import read_small_text

    try:
        text = read_small_text(card_file, what="model card", max_bytes=4 << 20)
    except UnicodeDecodeError:
        raise CardError(
            f"{card_file} is not UTF-8 text; it cannot be a model card. Move it aside, then run again"
        ) from None
    yaml_text, fences, body = _split_front_matter(text, card_file)
    results = _checked_results(_front_matter(yaml_text, card_file), card_file) if yaml_text is not None else []
    return yaml_text, fences, body, results


def card_results(card_file: Path) -> list[dict[str, Any]]:
    """The measured results (not the paper's) that a README.md model card's model-index holds; [] when there is
    no card. A malformed result is refused (CardError naming the field), never skipped."""
    path = Path(card_file)
    if not path.exists():
        return []
    results = _read_card(path)[3]
    return [r for r in results if r.get("source", {}).get("name") != PAPER_SOURCE["name"]]


def _result_key(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        r["dataset"].get("name"),
        r["dataset"].get("split"),
        r["metrics"][0].get("type"),
        json.dumps(r["metrics"][0].get("args", {}), sort_keys=True, default=str),
    )


def _replace_model_index(yaml_text: str, index: list[dict[str, Any]]) -> str:
    """The front matter with its top-level `model-index:` block replaced by `index` (appended when absent); every
    other line is kept as it was, comments included."""
    import yaml

    block = yaml.safe_dump({"model-index": index}, sort_keys=False).splitlines(keepends=True)
    lines = yaml_text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if re.match(r"^model-index\s*:", line)), None)
    if start is None:
        return "".join(lines + block)
    end = next((i for i in range(start + 1, len(lines)) if _TOP_LEVEL_KEY.match(lines[i])), len(lines))
    return "".join(lines[:start] + block + lines[end:])


def _replace_results_table(body: str, index: list[dict[str, Any]]) -> str:
    """The body with the results table this package generated brought up to date (or a Results section added at
    the end); the user's other lines are kept."""
    lines = body.split("\n")
    table = _results_table(index)
    if _TABLE_HEADER in lines:
        start = lines.index(_TABLE_HEADER)
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        return "\n".join(lines[:start] + table + lines[end:])
    return body.rstrip("\n") + "\n\n## Results\n\n" + "\n".join(table) + "\n"


def merge_card_result(card_file: Path, result: dict[str, Any], new_card: str, *, overwrite: bool = False) -> Path:
    """Record `result` (`measured_result`) in the model card `card_file`, written atomically, and return its path.

    - No file yet: `new_card` (a `model_card` holding `result`) is written.
    - A model card (front matter): a result with the same dataset, split, metric and arguments is replaced, any
      other is kept; the model-index block and the generated results table are rewritten, every other line stays.
    - A README without front matter: refused (FileExistsError) unless `overwrite`, and then front matter holding
      the result is put above the text, which is kept as it was.
    Malformed front matter or results are refused (CardError) and nothing is written."""
    import yaml

    from ..data.files import atomic_write

    card_file = Path(card_file)
    if not card_file.exists() and not card_file.is_symlink():
        return atomic_write(card_file, new_card, overwrite=False)
    yaml_text, (opening, closing), body, results = _read_card(card_file)
    if yaml_text is None:
        if not overwrite:
            raise FileExistsError(
                f"{card_file} is not a model card (it has no YAML front matter). Pass --overwrite "
                "to add the card's front matter above its text (the text is kept as it is)"
            )
        front = {"library_name": "vdvae-zoo", "model-index": [{"name": card_file.parent.name, "results": [result]}]}
        return atomic_write(card_file, "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body)
    front = _front_matter(yaml_text, card_file)
    fresh: list[dict[str, Any]] = [{"name": card_file.parent.name}]
    previous = cast("list[dict[str, Any]]", front.get("model-index") or fresh)
    kept = [r for r in results if _result_key(r) != _result_key(result)]
    index: list[dict[str, Any]] = [{**previous[0], "results": kept + [result]}, *previous[1:]]
    newline = "\r\n" if opening.endswith("\r\n") else "\n"
    merged_yaml = _replace_model_index(yaml_text.replace("\r\n", "\n"), index).replace("\n", newline)
    merged = opening + merged_yaml + closing + _replace_results_table(body, index[0]["results"])
    if _front_matter(_split_front_matter(merged, card_file)[0] or "", card_file).get("model-index") != index:
        raise CardError(
            f"{card_file}: its front matter could not be merged line by line (an unusual layout of "
            "model-index); move that block to the end of the front matter, then run again"
        )
    return atomic_write(card_file, merged)


def check_card(card_file: Path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, a card that `merge_card_result` would refuse (malformed; not a model card without
    `overwrite`)."""
    card_file = Path(card_file)
    if card_file.exists() or card_file.is_symlink():
        yaml_text = _read_card(card_file)[0]
        if yaml_text is None and not overwrite:
            raise FileExistsError(
                f"{card_file} is not a model card (it has no YAML front matter). Pass --overwrite "
                "to add the card's front matter above its text (the text is kept as it is)"
            )


def add_card_result(
    folder: Path,
    result: dict[str, Any],
    card_lines: list[str],
    *,
    overwrite: bool = False,
    entry: ModelEntry | None = None,
) -> Path:
    """Record a measured result in the card (README.md) of model folder `folder`: merged into the card that is
    there (`merge_card_result`), or a new card for the folder's config.json."""
    from ..config import resolve_config
    from ..data.files import CARD_NAME, CONFIG_NAME

    folder = Path(folder)
    new_card = model_card(resolve_config(folder / CONFIG_NAME), card_lines, entry, results=[result])
    return merge_card_result(folder / CARD_NAME, result, new_card, overwrite=overwrite)
