"""Model cards are merged, never replaced: `eval --card` and `publish --results-from` keep every line of a user's
README.md but the model-index block and the results table this package generates."""

import json

import pytest
from click.testing import CliRunner
from helpers import image_folder, tiny_config_dict

from vdvae_zoo.cli import main
from vdvae_zoo.config import VDVAEConfig
from vdvae_zoo.weights.cards import CardError, card_results, measured_result, merge_card_result, model_card

USER_CARD = """---
# the user's own comment
license: apache-2.0
tags:
- faces
model-index:
- name: my-faces
  results: []
widget: {note: keep me}
---

# My faces model

Fine-tuned by me on my own photos. Do not remove this line.

## Training

- 20,000 steps, lr 1.5e-4
"""

PLAIN_README = "# Notes\n\nMy own notes about this folder, with no front matter.\n"


def _result(value=1.5, seed=0, command="vdvae-zoo eval m --data d"):
    return measured_result("mine", "test", value, args={"seed": seed}, command=command)


def _new_card(result):
    return model_card(VDVAEConfig.from_dict(tiny_config_dict()), [], results=[result])


def _user_lines_kept(before: str, after: str) -> None:
    """Every line of `before` outside its model-index block stands in `after`, in the same order."""
    lines = before.splitlines()
    start = lines.index("model-index:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "-")))
    kept = lines[:start] + lines[end:]
    rest = iter(after.splitlines())
    for line in kept:
        assert any(line == other for other in rest), f"line {line!r} of the user's card is lost"


def test_a_users_card_keeps_every_line_and_gains_the_result(tmp_path):
    from huggingface_hub import ModelCard

    card = tmp_path / "README.md"
    card.write_text(USER_CARD)
    merge_card_result(card, _result(1.5), _new_card(_result(1.5)))
    after = card.read_text()
    _user_lines_kept(USER_CARD, after)
    assert "# My faces model" in after and "## Training" in after and "# the user's own comment" in after
    results = ModelCard.load(card).data.eval_results
    assert [r.metric_value for r in results] == [1.5]
    # the same dataset, split, metric and arguments replace the result; another seed adds one; nothing doubles
    merge_card_result(card, _result(1.25), _new_card(_result(1.25)))
    merge_card_result(card, _result(1.75, seed=1), _new_card(_result(1.75, seed=1)))
    after = card.read_text()
    _user_lines_kept(USER_CARD, after)
    assert [r.metric_value for r in ModelCard.load(card).data.eval_results] == [1.25, 1.75]
    assert after.count("## Results") == 1 and "| 1.25 |" in after and "| 1.5 |" not in after


def test_a_card_without_results_or_model_index_gets_them_without_losing_a_line(tmp_path):
    card = tmp_path / "README.md"
    text = "---\nlicense: mit\n---\n# Title\n\ntext\n"
    card.write_text(text)
    merge_card_result(card, _result(), _new_card(_result()))
    after = card.read_text()
    assert after.startswith("---\nlicense: mit\nmodel-index:\n") and "# Title\n\ntext\n" in after
    assert [r["metrics"][0]["value"] for r in card_results(card)] == [1.5]


def test_a_readme_that_is_not_a_card_needs_overwrite_and_keeps_its_text(tmp_path):
    card = tmp_path / "README.md"
    card.write_text(PLAIN_README)
    with pytest.raises(FileExistsError, match="not a model card.*--overwrite"):
        merge_card_result(card, _result(), _new_card(_result()))
    assert card.read_text() == PLAIN_README
    merge_card_result(card, _result(), _new_card(_result()), overwrite=True)
    after = card.read_text()
    assert after.startswith("---\n") and after.endswith(PLAIN_README) and len(card_results(card)) == 1


@pytest.mark.parametrize(
    "bad, field",
    [
        (
            "\n  - task: {type: density-estimation}\n    dataset: {name: x}\n    metrics: [{type: bpd, value: 1.0}]\n"
            "    source: someone",
            "results[0].source",
        ),
        ("\n  - dataset: {name: x}\n    metrics: []", "results[0].metrics"),
        ("\n  - dataset: x\n    metrics: [{type: bpd, value: 1.0}]", "results[0].dataset"),
        ("\n  - dataset: {name: x}\n    metrics: [{type: bpd, value: high}]", "results[0].metrics[0]"),
        (" someone", "[0].results"),
    ],
)
def test_malformed_results_are_refused_naming_the_field_and_nothing_is_written(tmp_path, bad, field):
    card = tmp_path / "README.md"
    text = f"---\nmodel-index:\n- name: m\n  results:{bad}\n---\n# Mine\n"
    card.write_text(text)
    with pytest.raises(CardError, match=r"README.md: model-index .*" + field.replace("[", r"\[").replace("]", r"\]")):
        merge_card_result(card, _result(), _new_card(_result()))
    with pytest.raises(CardError, match="correct or remove"):
        card_results(card)
    assert card.read_text() == text


@pytest.mark.parametrize(
    "text, says",
    [
        ("---\nlicense: [mit\n---\n# x\n", "not valid YAML"),
        ("---\n- a\n- b\n---\n# x\n", "not a mapping"),
        ("---\nlicense: mit\n# never closed\n", "never closes"),
    ],
)
def test_broken_front_matter_is_refused_and_kept(tmp_path, text, says):
    card = tmp_path / "README.md"
    card.write_text(text)
    with pytest.raises(CardError, match=says):
        merge_card_result(card, _result(), _new_card(_result()), overwrite=True)
    assert card.read_text() == text


def test_crlf_cards_stay_crlf(tmp_path):
    card = tmp_path / "README.md"
    card.write_bytes(b"---\r\nlicense: mit\r\n---\r\n# Title\r\n\r\ntext\r\n")
    merge_card_result(card, _result(), _new_card(_result()))
    data = card.read_bytes()
    assert data.startswith(b"---\r\nlicense: mit\r\nmodel-index:\r\n") and b"# Title\r\n\r\ntext\r\n" in data
    assert len(card_results(card)) == 1


# ------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture()
def model_and_data(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    return runner, tmp_path / "m", image_folder(tmp_path / "imgs", 3, size=32, seed=1)


def test_eval_card_merges_into_the_users_readme_and_records_the_command_as_run(model_and_data):
    runner, model, data = model_and_data
    (model / "README.md").write_text(USER_CARD)
    result = runner.invoke(main, ["eval", str(model), "--data", str(data), "--card", str(model), "--seed", "2"])
    assert result.exit_code == 0, result.output
    after = (model / "README.md").read_text()
    _user_lines_kept(USER_CARD, after)
    (measured,) = card_results(model / "README.md")
    source = measured["source"]["name"]
    assert source.endswith(f"vdvae-zoo eval {model} --data {data} --card {model} --seed 2")
    assert "--split" not in source and "--samples" not in source  # never passed, so never recorded


def test_eval_card_refuses_before_any_work(model_and_data, monkeypatch):
    runner, model, data = model_and_data
    (model / "README.md").write_text(PLAIN_README)
    import vdvae_zoo.cli.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before the card was checked"))
    result = runner.invoke(main, ["eval", str(model), "--data", str(data), "--card", str(model)])
    assert result.exit_code == 1 and "not a model card" in result.output and "Traceback" not in result.output
    assert (model / "README.md").read_text() == PLAIN_README
    (model / "README.md").write_text(
        "---\nmodel-index:\n- name: m\n  results:\n  - dataset: {name: x}\n    metrics: []\n---\n# Mine\n"
    )
    result = runner.invoke(main, ["eval", str(model), "--data", str(data), "--card", str(model)])
    assert result.exit_code == 1 and "results[0].metrics must be a non-empty list" in result.output


def test_publish_refuses_malformed_results_naming_the_field(tmp_path):
    folder = tmp_path / "measured"
    folder.mkdir()
    (folder / "README.md").write_text(
        "---\nmodel-index:\n- name: m\n  results:\n  - dataset: {name: x}\n"
        "    metrics: [{type: bpd, value: 1.0}]\n    source: someone\n---\n"
    )
    result = CliRunner().invoke(
        main, ["publish", f"x={tmp_path / 'none.th'}", "--org", "o", "--dry-run", "--results-from", str(folder)]
    )
    assert result.exit_code == 1 and "results[0].source must be a mapping" in result.output
    assert "Traceback" not in result.output


def test_a_grey_models_card_states_its_channels():
    card = model_card(VDVAEConfig.from_dict(tiny_config_dict(image_channels=1)), [])
    assert "uint8 (4, 16, 16, 1)" in card and json.loads(card.split("```json\n")[1].split("```")[0])
