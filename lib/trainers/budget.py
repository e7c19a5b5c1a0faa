"""What bounds and reports a training run: steps, minutes, validations, the best model, progress.

One ignite handler on the trainer does all of it, because they share one clock:

- the learning rate follows lib.training.learning_rate of the run's progress (warming up in a fine-tune);
- a validation (the evaluator: soft accuracy on held-out strokes) runs at the start when the run
  fine-tunes a published model (that score is the one to beat), every `val_every` steps (more often
  while a run from scratch waits for its first model, where validations are cheap), and once more
  when the run stops between two of them;
- the run stops at `max_steps`, or early enough that its last validation and publication end
  within `max_minutes` (counted from the start of the train request, data preparation included);
- each validation that beats the best so far is published at once (lib.model_files), so a first
  useful model is served early and better ones replace it; a run from scratch holds its models back
  until one meets every floor of FIRST_MODEL_FLOORS that its validation could measure, at two validations
  in a row (a network early in training swings across a floor and back), and publishes
  the best it held when none ever does (a served model that misses a whole class is worse than a wait);
  while it waits, it validates the network being trained (`iterate`) instead of the evaluator's own
  network (the run's average of the weights, which trails the iterate by about a tenth of its steps: on
  the demo, a validation or two, 7 steps, later to meet the floors in a run logged both ways);
- progress (step, loss, held-out accuracy, elapsed, estimated time left) goes to the log, which
  MONAI Label shows in `GET /train/`, and to the stats file that `/info` shows as `train_stats`.

Under DDP (lib.distributed) every process runs one: they validate together (each on its share of
the cases, the metric gathered over all), take the largest progress of any of them for the learning
rate and stop as soon as any of them must, all at the same step; only the `main` process (rank 0)
publishes, writes the stats file and logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ignite.engine import Engine, Events
from torch.nn import Module

from lib.distributed import agreed_max
from lib.model_files import Publisher
from lib.training import learning_rate, run_progress

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0
# What a run from scratch asks of its first served model (metric -> floor; a metric a validation could not
# measure, NaN, does not hold the model back):
# - `worst_class_accuracy`, the worst class's soft accuracy on held-out strokes (lib.metrics.StrokeAccuracy,
#   reduction "min"): the right class gets three quarters of the probability on the held-out strokes of every
#   class. The mean alone let a model through that missed a class: on the demo's held-out case, the models of
#   steps 50 to 150 scored 0.55 to 0.80 on the mean but 0.05 to 0.16 on the worst class, and a model of step
#   50, served, found no spleen on new cases.
# - `worst_class_dice`, the worst class's Dice against the propagation of a held-out case's strokes
#   (lib.metrics.WorstRegionDice): strokes lie inside the organs, and a model can get them right while
#   missing an organ's extent: on the demo, models that met the strokes' floor (or one of a half) were served
#   and scored spleen Dice 0.64-0.73 on a case without strokes, the goal being 0.7. There the models of step
#   100 scored 0.48-0.64 on this metric and those of step 150, 0.82-0.86 (three runs). 0.7, not higher: a
#   good model's Dice on a small or faint organ (a pancreas) is often below 0.8, and a floor it never meets
#   keeps every model of the run back until its end.
WORST_CLASS_ACCURACY, WORST_CLASS_DICE = "worst_class_accuracy", "worst_class_dice"
FIRST_MODEL_FLOORS = {WORST_CLASS_ACCURACY: 0.75, WORST_CLASS_DICE: 0.7}
# Validations while waiting for a first model that meets the floors may cost up to this share of the training
# time between them (RunBudget._check_early).
EARLY_CHECK_SHARE = 0.1


class RunBudget:
    def __init__(
        self,
        evaluator: Engine | None,
        metric_name: str,
        publisher: Publisher,
        stats_path: Path,
        max_steps: int,
        max_seconds: float,
        val_every: int,
        peak_learning_rate: float,
        started_at: float,
        fine_tuning: bool,
        details: dict,
        main: bool = True,
        floors: dict[str, float] | None = None,
        iterate: Module | None = None,
    ):
        self.evaluator = evaluator
        self.iterate = iterate
        self.metric_name = metric_name
        self.publisher = publisher
        self.floors = floors or {}
        self.stats_path = Path(stats_path)
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.val_every = val_every
        self.peak = peak_learning_rate
        self.started_at = started_at
        self.fine_tuning = fine_tuning
        self.details = details
        self.main = main
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_score: float | None = None
        self.last_floor_scores: dict[str, float] = {}
        self.last_validated_step: int | None = None
        self.floors_met_before = False  # whether the last validation's model met every floor
        self.served = fine_tuning  # whether this run's best is served (a fine-tune starts from the served model)
        self.holding = False  # a better model than the served one is held back (below a floor)
        self.validation_seconds = 0.0
        self.validated_at: float | None = None  # when the last validation ended (with an evaluator)
        self.step_seconds = 0.0
        self.loss = math.nan
        self._last_log = 0.0
        self._steps_timed = 0
        self._progress = 0.0  # of the run when the next step starts, agreed by all processes

    @property
    def waiting_for_first_model(self) -> bool:
        """Whether this run from scratch has not yet served a model (it holds them back for the floors)."""
        return not self.served and bool(self.floors)

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.STARTED, self._started)
        trainer.add_event_handler(Events.ITERATION_STARTED, self._set_learning_rate)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        trainer.add_event_handler(Events.COMPLETED, self._completed)

    # ---- clock ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.time() - self.started_at

    def progress(self, step: int) -> float:
        return run_progress(step, self.max_steps, self.elapsed(), self.max_seconds)

    def eta_seconds(self, step: int) -> float:
        steps_left = self.max_steps - step
        by_steps = steps_left * self.step_seconds + self.validation_seconds * math.ceil(steps_left / self.val_every)
        return max(0.0, min(by_steps, self.max_seconds - self.elapsed()))

    # ---- events -----------------------------------------------------------------------------------
    def _started(self, trainer: Engine) -> None:
        self._iteration_started_at = time.time()
        if self.fine_tuning:
            self._validate(trainer, "the published model, before training")
        self._progress, _, _ = self._agreed(0)
        self._write(trainer, "running")

    def _set_learning_rate(self, trainer: Engine) -> None:
        rate = learning_rate(self.peak, self._progress, trainer.state.iteration, self.fine_tuning)
        for group in trainer.optimizer.param_groups:
            group["lr"] = rate
        self._iteration_started_at = time.time()

    def _iteration_completed(self, trainer: Engine) -> None:
        step = trainer.state.iteration
        seconds = time.time() - self._iteration_started_at
        self._steps_timed += 1
        self.step_seconds += (seconds - self.step_seconds) / min(self._steps_timed, 20)  # running mean
        output = trainer.state.output or {}
        self.loss = float(output.get("loss", math.nan)) if isinstance(output, dict) else math.nan
        self._progress, stop, check_early = self._agreed(step)
        if step % self.val_every == 0 or (check_early and not stop):
            self._validate(trainer, f"step {step}")
        if stop:
            if self.main:
                logger.info(f"Stopping at step {step}: {'step' if step >= self.max_steps else 'time'} limit")
            trainer.terminate()
            return
        if self.main and time.time() - self._last_log >= LOG_EVERY_SECONDS:
            self._report(trainer)

    def _completed(self, trainer: Engine) -> None:
        if self.last_validated_step != trainer.state.iteration:
            self._validate(trainer, f"step {trainer.state.iteration} (end of run)")
        if self.holding and self.main:
            logger.warning(
                f"No model of this run met the first model's floors {self.floors}; publishing the best one "
                f"(step {self.best_step}) all the same"
            )
            self.publisher.release()
        self.holding = False
        self._write(trainer, "done")
        if self.main:
            logger.info(
                f"Training done: {trainer.state.iteration} steps in {self.elapsed():.0f} s; best held-out accuracy "
                f"{self.best if self.best is not None else float('nan'):.4f} at step {self.best_step}"
            )

    def _agreed(self, step: int) -> tuple[float, bool, bool]:
        """The run's progress, whether it stops now and whether it validates early (:meth:`_check_early`),
        the same in every process (lib.distributed.agreed_max)."""
        stop = step >= self.max_steps or self._out_of_time()
        progress, stop, early = agreed_max([self.progress(step), float(stop), float(self._check_early())])
        return progress, bool(stop), bool(early)

    def _check_early(self) -> bool:
        """Whether to validate before the next `val_every` step: while a run from scratch holds its models
        back for the first model's floors, as often as a validation costs at most EARLY_CHECK_SHARE of the
        time spent training since the last one (steps, data loading and all), so the first model that meets
        them is served within a few steps rather than up to `val_every` later (on the demo on a slow CPU,
        0.5 s validations against 1 s steps: every 5 steps instead of 50). Only after the first scheduled
        validation, which measures its cost."""
        if self.served or not self.floors or self.validated_at is None:
            return False
        return (time.time() - self.validated_at) * EARLY_CHECK_SHARE >= self.validation_seconds

    def _out_of_time(self) -> bool:
        """True when one more step, a validation and a publication would not end within the budget."""
        reserve = self.step_seconds + 1.5 * self.validation_seconds + 5.0
        return self.elapsed() + reserve >= self.max_seconds

    def _validate(self, trainer: Engine, when: str) -> None:
        step = trainer.state.iteration
        self.last_validated_step = step
        if self.evaluator is None:
            return
        waiting = self.iterate is not None and not self.served
        with self._validating(self.iterate if waiting else None):
            self._validate_and_publish(trainer, f"{when} (the iterate)" if waiting else when)
        self._write(trainer, "running")

    @contextmanager
    def _validating(self, network: Module | None):
        """The evaluator validates, and the publisher publishes, `network` instead of their own (None: theirs)."""
        if network is None:
            yield
            return
        own = self.evaluator.network, self.publisher.network
        self.evaluator.network = self.publisher.network = network
        try:
            yield
        finally:
            self.evaluator.network, self.publisher.network = own

    def _validate_and_publish(self, trainer: Engine, when: str) -> None:
        step = trainer.state.iteration
        start = time.time()
        self.evaluator.run()
        self.validated_at = time.time()
        self.validation_seconds = self.validated_at - start
        metrics = self.evaluator.state.metrics
        score = float(metrics.get(self.metric_name, math.nan))
        self.last_score = score
        self.last_floor_scores = {name: float(metrics.get(name, math.nan)) for name in self.floors}
        # NaN (not measured) is never below a floor
        short = [f"{name} < {floor}" for name, floor in self.floors.items() if self.last_floor_scores[name] < floor]
        # a first model must meet the floors at two validations in a row: on the demo a first model that met
        # them once, just (worst class Dice 0.717 at step 70, 0.634 at step 63), scored spleen 0.68 on a new case
        met = not short
        if met and not self.floors_met_before and not self.served and self.floors:
            short = ["the floors met once, not yet at two validations in a row"]
        self.floors_met_before = met
        # a tie publishes the newer model: it trained longer (a small held-out set is often perfect early)
        improved = math.isfinite(score) and (self.best is None or score >= self.best)
        # the first model that meets the floors is served even if one held back before it scored higher: that
        # one missed a floor, and beating its score first could take the run many more steps
        first_to_meet = math.isfinite(score) and not self.served and not short
        outcome = f"best {self.best:.4f}" if self.best is not None else "no score"
        if improved or first_to_meet:
            self.best, self.best_step = score, step
            outcome = "the score to beat"
            if step > 0 or not self.fine_tuning:  # the published model needs no publishing
                outcome = self._publish(short) + ("" if improved else ", the first to meet the floors")
        if self.main:
            logger.info(
                f"Validation at {when}: held-out stroke accuracy {score:.4f}"
                + "".join(f", {name.replace('_', ' ')} {value:.4f}" for name, value in self.last_floor_scores.items())
                + f" ({outcome}); {self.validation_seconds:.1f} s"
            )

    def _publish(self, short: list[str]) -> str:
        """Serve the new best model, or hold it back while a run from scratch has not met the floors (`short`
        says which it misses)."""
        self.served = self.served or not short
        self.holding = not self.served
        if self.main and self.served:
            self.publisher.serve()
        elif self.main:
            self.publisher.hold()
        return "new best, published" if self.served else f"new best, held back: {', '.join(short)}"

    def _report(self, trainer: Engine) -> None:
        self._last_log = time.time()
        step = trainer.state.iteration
        logger.info(
            f"Progress: step {step}/{self.max_steps}, loss {self.loss:.4f}, held-out accuracy "
            f"{self.last_score if self.last_score is not None else float('nan'):.4f} (best "
            f"{self.best if self.best is not None else float('nan'):.4f}), {self.elapsed():.0f} s elapsed, "
            f"about {self.eta_seconds(step):.0f} s left"
        )
        self._write(trainer, "running")

    def _write(self, trainer: Engine, status: str) -> None:
        if not self.main:
            return
        step = trainer.state.iteration
        stats = {
            **self.details,
            "status": status,
            "step": step,
            "max_steps": self.max_steps,
            "elapsed_seconds": round(self.elapsed(), 1),
            "max_seconds": round(self.max_seconds, 1),
            "eta_seconds": round(self.eta_seconds(step), 1) if status == "running" else 0.0,
            "seconds_per_step": round(self.step_seconds, 3),
            "loss": None if math.isnan(self.loss) else round(self.loss, 5),
            "held_out_accuracy": self.last_score,
            **{name: None if math.isnan(value) else value for name, value in self.last_floor_scores.items()},
            "held_back": self.holding,
            "best_metric": self.best,
            "best_step": self.best_step,
            "learning_rate": trainer.optimizer.param_groups[0]["lr"],
        }
        partial = self.stats_path.with_name(self.stats_path.name + ".partial")
        partial.write_text(json.dumps(stats, indent=2))
        os.replace(partial, self.stats_path)
