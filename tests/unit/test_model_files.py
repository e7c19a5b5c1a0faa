"""The published model: plan and weights together, atomic publication, healing from a corrupt file."""

import torch

from lib.inference import build_network
from lib.model_files import Publisher, UnreadableModel, heal, previous_path, publish_model, read_model
from lib.planning import make_plan

PLAN = make_plan([[3.0, 3.0, 3.0]], [[32, 32, 32]], num_modalities=2, num_classes=3)


def test_a_published_model_reads_back_with_its_plan_and_keeps_the_one_it_replaced(tmp_path):
    path = tmp_path / "cmfnet.pt"
    first, second = build_network(PLAN), build_network(PLAN)
    publish_model(first, PLAN, path)
    assert not previous_path(path).exists()
    publish_model(second, PLAN, path)
    state, plan = read_model(path)
    assert plan == PLAN
    assert all(torch.equal(state[k], v) for k, v in second.state_dict().items())
    previous, _ = read_model(previous_path(path))
    assert all(torch.equal(previous[k], v) for k, v in first.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmfnet.plan.json", "cmfnet.pt", "cmfnet.pt.previous"]


def test_a_corrupt_model_is_moved_aside_and_the_previous_one_served(tmp_path):
    path = tmp_path / "cmfnet.pt"
    publish_model(build_network(PLAN), PLAN, path)
    publish_model(build_network(PLAN), PLAN, path)
    good_previous = previous_path(path).read_bytes()
    path.write_bytes(path.read_bytes()[:1000])  # half-written
    try:
        read_model(path)
        raise AssertionError("a truncated model must not read")
    except UnreadableModel as error:
        assert "cannot be read" in str(error)
        assert heal(path, str(error))
    assert path.read_bytes() == good_previous
    assert len(list(tmp_path.glob("cmfnet.pt.corrupt-*"))) == 1
    read_model(path)


def test_healing_without_a_previous_model_says_so(tmp_path):
    path = tmp_path / "cmfnet.pt"
    path.write_bytes(b"not a model")
    assert heal(path, "test") is False
    assert not path.exists() and len(list(tmp_path.glob("cmfnet.pt.corrupt-*"))) == 1


def test_two_corrupt_models_in_the_same_second_are_both_kept(tmp_path):
    path = tmp_path / "cmfnet.pt"
    for content in (b"first bad file", b"second bad file"):
        path.write_bytes(content)
        heal(path, "test")
    kept = {p.read_bytes() for p in tmp_path.glob("cmfnet.pt.corrupt-*")}
    assert kept == {b"first bad file", b"second bad file"}


def test_a_held_model_is_published_as_it_was_when_held_not_as_it_trained_on(tmp_path):
    path = tmp_path / "cmfnet.pt"
    network = build_network(PLAN)
    publisher = Publisher(network, PLAN, path)
    publisher.hold()
    held = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(1.0)  # training goes on after the hold
    assert not path.exists()  # held, not served
    publisher.release()
    state, _ = read_model(path)
    assert all(torch.equal(state[k], v) for k, v in held.items())
    publisher.serve()
    state, _ = read_model(path)
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
