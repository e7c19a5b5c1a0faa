"""One settings object: defaults, bounds with clear messages, conf and request layering, the README table."""

from pathlib import Path

import pytest

from lib.errors import InvalidInput
from lib.settings import TrainSettings, markdown_table, parse_conf

ROOT = Path(__file__).resolve().parents[2]


def test_request_overrides_conf_which_overrides_defaults():
    server, train = parse_conf(
        {"max_minutes": "3", "loss": '{"affinity": 0}', "auto_train": "false", "multi_gpu": "true"}
    )
    assert server.auto_train is False and train.max_minutes == 3.0 and train.loss.affinity == 0.0
    assert train.multi_gpu is True and TrainSettings.from_request({"multi_gpu": False}, train).multi_gpu is False
    run = TrainSettings.from_request({"max_steps": 10, "loss": {"pseudo": 2}, "model": "cmfnet"}, train)
    assert run.max_steps == 10 and run.max_minutes == 3.0
    assert run.loss.pseudo == 2.0 and run.loss.affinity == 0.0  # a partial loss dict keeps the other weights
    assert TrainSettings().max_steps == TrainSettings.model_fields["max_steps"].default


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"max_steps": -1}, "max_steps: Input should be greater than or equal to 1"),
        ({"max_minutes": 0}, "max_minutes: Input should be greater than 0"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"loss": {"affinty": 1}}, "loss.affinty: Extra inputs are not permitted"),
        ({"max_epochs": 3}, "max_epochs: Extra inputs are not permitted"),
        ({"propagation": "graphcut"}, "propagation"),
        ({"multi_gpu": "maybe"}, "multi_gpu: Input should be a valid boolean"),
    ],
)
def test_bad_train_parameters_are_a_422_that_names_the_key(request_, message):
    with pytest.raises(InvalidInput) as error:
        TrainSettings.from_request(request_)
    assert error.value.status_code == 422
    assert message in error.value.detail


def test_monai_label_keys_of_a_train_request_pass_through():
    """MONAILabelClient (3D Slicer's) adds `client_id` to every train request; MONAI Label adds its own keys."""
    request = {"client_id": None, "model": "cmfnet", "device": "cpu", "gpus": "all", "enqueue": True, "max_steps": 3}
    assert TrainSettings.from_request(request).max_steps == 3


def test_unknown_conf_keys_and_bad_modalities_are_refused():
    with pytest.raises(InvalidInput, match="unknown --conf key"):
        parse_conf({"auto_train_epochs": "3"})
    with pytest.raises(InvalidInput, match="modalities"):
        parse_conf({"modalities": "ct,ct"})
    server, _ = parse_conf({"modalities": " CT , mr"})
    assert server.modality_list == ["ct", "mr"]


def test_readme_settings_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- settings:start -->")[1].split("<!-- settings:end -->")[0].strip()
    assert table == markdown_table(), "run `python -m lib.settings --readme` to regenerate it"
    for key in ("max_steps", "max_minutes", "auto_train_minutes", "loss.pseudo"):
        assert f"`{key}`" in table
