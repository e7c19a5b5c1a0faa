"""A run's budget on real ignite engines: step and time limits, the best model published, progress written."""

import json
import time

import pytest
import torch
from ignite.engine import Engine, Events

from lib.trainers.budget import FIRST_MODEL_FLOORS, WORST_CLASS_ACCURACY, WORST_CLASS_DICE, RunBudget
from lib.training import FINE_TUNE_WARMUP_STEPS


def engines(scores: list[float], step_seconds: float = 0.0, validation_seconds: float = 0.02, **floor_scores):
    """A trainer whose steps take `step_seconds`, and an evaluator (taking `validation_seconds`) that reports
    `scores` in turn as "acc" (and each of `floor_scores`' lists under its name).

    Validations cost 20 ms by default: against instant steps, a run that waits for a first model then checks
    early (RunBudget._check_early) only after a 0.2 s pause, which no test's steps take; with a validation
    of about nothing, a pause of a few milliseconds (a busy machine) added a check that took the next score."""
    trainer = Engine(lambda engine, batch: time.sleep(step_seconds) or {"loss": 1.0 / engine.state.iteration})
    trainer.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    evaluator = Engine(lambda engine, batch: time.sleep(validation_seconds))
    remaining = {"acc": list(scores), **{name: list(values) for name, values in floor_scores.items()}}

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine):
        for name, values in remaining.items():
            engine.state.metrics[name] = values.pop(0) if values else 0.0

    return trainer, evaluator


class Recorder:
    """A publisher (lib.model_files.Publisher's methods) that records the trainer's step at each call."""

    def __init__(self, trainer, published: list):
        self.trainer, self.published, self.held = trainer, published, None

    def serve(self):
        self.published.append(self.trainer.state.iteration)
        self.held = None

    def hold(self):
        self.held = self.trainer.state.iteration

    def release(self):
        self.published.append(("released", self.held))


def budget(trainer, evaluator, published, tmp_path, **overrides):
    """A RunBudget that records the step of every publication in `published`."""
    options = {
        "evaluator": evaluator,
        "metric_name": "acc",
        "publisher": Recorder(trainer, published),
        "stats_path": tmp_path / "train_stats.json",
        "max_steps": 6,
        "max_seconds": 600.0,
        "val_every": 2,
        "peak_learning_rate": 0.01,
        "started_at": time.time(),
        "fine_tuning": False,
        "details": {"run_id": "test"},
    }
    return RunBudget(**{**options, **overrides})


def run(trainer, evaluator, rb, steps=1000):
    rb.attach(trainer)
    original = evaluator.run
    evaluator.run = lambda: original([0], max_epochs=1)  # one batch per validation
    trainer.run([0] * steps, max_epochs=1)


def test_stops_at_the_step_limit_and_publishes_the_best_model_not_the_last(tmp_path):
    trainer, evaluator = engines([0.75, 0.8, 0.8, 0.6])  # validations at steps 2, 4, 6, 8
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=8)
    run(trainer, evaluator, rb)
    assert trainer.state.iteration == 8
    assert published == [2, 4, 6]  # a tie publishes the newer model; 0.6 at step 8 is worse: not published
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["step"] == 8
    assert stats["best_metric"] == pytest.approx(0.8) and stats["best_step"] == 6


ACCURACY_FLOOR, DICE_FLOOR = FIRST_MODEL_FLOORS[WORST_CLASS_ACCURACY], FIRST_MODEL_FLOORS[WORST_CLASS_DICE]


def test_a_run_from_scratch_serves_no_model_that_misses_a_class_until_one_learns_them_all(tmp_path):
    # validations at steps 2, 4, 6, 8, 10: the mean rises at once, the worst class reaches the floor at step 6
    trainer, evaluator = engines(
        [0.7, 0.9, 0.95, 0.97, 0.98], worst_class_accuracy=[0.0, 0.3, ACCURACY_FLOOR, 0.9, 0.9]
    )
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=10, floors=FIRST_MODEL_FLOORS)
    run(trainer, evaluator, rb)
    assert published == [
        8,
        10,
    ]  # met at 6 and again at 8; worst_class_dice is not measured (NaN: no held-out case): it holds nothing back
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats[WORST_CLASS_ACCURACY] == pytest.approx(0.9) and stats["held_back"] is False


def test_while_waiting_for_a_first_model_the_iterate_is_validated_and_published_then_the_average(tmp_path):
    # validations at steps 2, 4, 6, 8: the worst class reaches the floor at step 4, and again at step 6
    trainer, evaluator = engines([0.7, 0.9, 0.95, 0.97], worst_class_accuracy=[0.0, ACCURACY_FLOOR, 0.9, 0.9])
    average, iterate = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    evaluator.network = average
    validated, served = [], []
    evaluator.add_event_handler(Events.STARTED, lambda engine: validated.append(engine.network))
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=8, floors=FIRST_MODEL_FLOORS, iterate=iterate)
    rb.publisher.network = average
    serve = rb.publisher.serve
    rb.publisher.serve = lambda: served.append(rb.publisher.network) or serve()
    run(trainer, evaluator, rb)
    assert published == [6, 8]
    assert validated == [iterate, iterate, iterate, average]  # the first model is the iterate's
    assert served == [iterate, average]
    assert evaluator.network is average and rb.publisher.network is average  # put back


def test_the_first_model_to_meet_the_floors_is_served_though_one_held_back_before_it_scored_higher(tmp_path):
    # validations at steps 2, 4, 6, 8: step 2 scores highest but misses the Dice floor, step 6 is the first to
    # meet it at a second validation in a row
    trainer, evaluator = engines(
        [0.9, 0.8, 0.8, 0.85],
        worst_class_accuracy=[0.9, 0.9, 0.9, 0.9],
        worst_class_dice=[0.5, DICE_FLOOR, 0.9, 0.9],
    )
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=8, floors=FIRST_MODEL_FLOORS)
    run(trainer, evaluator, rb)
    assert published == [6, 8]  # then the bar is the served model's 0.8, which step 8 beats
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats["best_step"] == 8 and stats["held_back"] is False


def test_a_first_model_that_meets_the_floors_once_and_then_falls_below_is_not_served(tmp_path):
    # validations at steps 2, 4, 6, 8, 10: the Dice floor is met at 4, missed at 6, met at 8 and 10
    trainer, evaluator = engines(
        [0.8, 0.9, 0.85, 0.9, 0.92],
        worst_class_accuracy=[0.9] * 5,
        worst_class_dice=[0.5, DICE_FLOOR, DICE_FLOOR - 0.1, DICE_FLOOR, DICE_FLOOR + 0.1],
    )
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=10, floors=FIRST_MODEL_FLOORS)
    run(trainer, evaluator, rb)
    assert published == [10]
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats["best_step"] == 10 and stats["held_back"] is False


def test_a_run_from_scratch_waits_for_its_first_model_until_one_is_served(tmp_path):
    # validations at steps 2, 4 and 6: the worst class reaches the floor at step 4 and again at step 6
    trainer, evaluator = engines([0.7, 0.9, 0.95], worst_class_accuracy=[0.3, ACCURACY_FLOOR, 0.9])
    rb = budget(trainer, evaluator, [], tmp_path, max_steps=8, floors=FIRST_MODEL_FLOORS)
    waiting = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: waiting.append(rb.waiting_for_first_model))
    run(trainer, evaluator, rb)
    assert waiting == [True] * 6 + [False, False]
    for fine_tuning, floors in ((True, FIRST_MODEL_FLOORS), (False, None)):  # served from the start; no floors
        assert not budget(
            trainer, evaluator, [], tmp_path, fine_tuning=fine_tuning, floors=floors
        ).waiting_for_first_model


def test_a_first_model_must_meet_every_floor_it_can_measure(tmp_path):
    # the held-out strokes are right from step 4 on, the regions of the held-out case only from step 6
    trainer, evaluator = engines(
        [0.7, 0.9, 0.95, 0.97],
        worst_class_accuracy=[0.3, 0.9, 0.95, 0.97],
        worst_class_dice=[0.1, DICE_FLOOR - 0.2, DICE_FLOOR, DICE_FLOOR],
    )
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=8, floors=FIRST_MODEL_FLOORS)
    run(trainer, evaluator, rb)
    assert published == [8]
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats[WORST_CLASS_DICE] == pytest.approx(DICE_FLOOR) and stats["best_step"] == 8


def validated_steps(rb, trainer) -> list[int]:
    """Records the trainer's step at each of `rb`'s validations."""
    steps = []
    original = rb._validate
    rb._validate = lambda engine, when: steps.append(trainer.state.iteration) or original(engine, when)
    return steps


def test_while_waiting_for_a_first_model_cheap_validations_run_between_the_scheduled_ones(tmp_path):
    # scheduled at 10 and 20; validations (about a millisecond) cost little against 100 ms steps (a tenth of a
    # step is far more than a validation takes even on a busy machine), so from step 10 on the run checks every
    # step until a model meets the floor at two checks in a row (steps 12 and 13), then keeps to the schedule
    trainer, evaluator = engines([0.5, 0.6, 0.7, 0.8, 0.9], 0.1, 0.0, worst_class_accuracy=[0.0, 0.3, 0.9, 0.95, 0.95])
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=20, val_every=10, floors=FIRST_MODEL_FLOORS)
    steps = validated_steps(rb, trainer)
    run(trainer, evaluator, rb)
    assert steps == [10, 11, 12, 13, 20] and published == [13, 20]


def test_costly_validations_keep_to_the_schedule_while_waiting_for_a_first_model(tmp_path):
    # a validation (200 ms) would cost more than a tenth of the 10 ms steps between checks: only 10, 20, 30, 40
    trainer, evaluator = engines([0.5, 0.6, 0.7, 0.8], 0.01, 0.2, worst_class_accuracy=[0.0, 0.3, 0.9, 0.9])
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=40, val_every=10, floors=FIRST_MODEL_FLOORS)
    steps = validated_steps(rb, trainer)
    run(trainer, evaluator, rb)
    assert steps == [10, 20, 30, 40] and published == [40]


def test_a_run_whose_models_never_learn_every_class_publishes_its_best_at_the_end(tmp_path):
    trainer, evaluator = engines([0.6, 0.8, 0.7], worst_class_accuracy=[0.0, 0.2, 0.4])  # the best is step 4
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=6, floors=FIRST_MODEL_FLOORS)
    run(trainer, evaluator, rb)
    assert published == [("released", 4)]


def test_a_fine_tune_is_not_held_to_the_floor(tmp_path):
    trainer, evaluator = engines([0.5, 0.6], worst_class_accuracy=[0.1, 0.2])  # the served model, then step 2
    published = []
    run(
        trainer,
        evaluator,
        budget(trainer, evaluator, published, tmp_path, max_steps=2, fine_tuning=True, floors=FIRST_MODEL_FLOORS),
    )
    assert published == [2]


def test_stops_early_enough_for_its_time_limit(tmp_path):
    trainer, evaluator = engines([0.1 * i for i in range(1, 100)], step_seconds=0.2)
    rb = budget(trainer, evaluator, [], tmp_path, max_steps=1000, max_seconds=7.0, val_every=5)
    start = time.time()
    run(trainer, evaluator, rb)
    elapsed = time.time() - start
    assert 5 < trainer.state.iteration < 1000
    assert elapsed <= 7.0  # the reserve (a step, a validation, 5 s) keeps the run inside its budget


def test_fine_tuning_must_beat_the_served_model_first(tmp_path):
    trainer, evaluator = engines([0.9, 0.5, 0.95])  # served model 0.9 at the start, then steps 2 and 4
    published = []
    rb = budget(trainer, evaluator, published, tmp_path, max_steps=4, fine_tuning=True)
    run(trainer, evaluator, rb)
    assert published == [4]


def test_learning_rate_decays_with_progress(tmp_path):
    trainer, evaluator = engines([0.5] * 10)
    rates = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rates.append(e.optimizer.param_groups[0]["lr"]))
    run(trainer, evaluator, budget(trainer, evaluator, [], tmp_path, max_steps=4))
    assert rates[0] == pytest.approx(0.01, rel=1e-3)  # the clock moved a little: progress is not exactly 0
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.01 * (1 - 3 / 4) ** 0.9 + 1e-9


def test_a_fine_tune_warms_its_learning_rate_up_and_a_run_from_scratch_does_not(tmp_path):
    rates = {}
    for fine_tuning in (True, False):
        trainer, evaluator = engines([0.5] * 40)
        seen = rates[fine_tuning] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e, s=seen: s.append(e.optimizer.param_groups[0]["lr"])
        )
        run(trainer, evaluator, budget(trainer, evaluator, [], tmp_path, max_steps=1000, fine_tuning=fine_tuning), 40)
    scratch, tuned = rates[False], rates[True]
    assert tuned[0] == pytest.approx(scratch[0] / FINE_TUNE_WARMUP_STEPS, rel=1e-2)  # step 1 of the ramp
    assert tuned[9] == pytest.approx(scratch[9] * 10 / FINE_TUNE_WARMUP_STEPS, rel=1e-2)
    assert tuned[FINE_TUNE_WARMUP_STEPS - 1 :] == pytest.approx(scratch[FINE_TUNE_WARMUP_STEPS - 1 :], rel=1e-2)
