"""What keeps data-parallel processes in step, on real torch.distributed (gloo) processes and ignite engines."""

import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine, Events

from lib.distributed import from_rank0, rank_share
from lib.trainers.budget import RunBudget
from tests.conftest import free_port

STEPS = 1000


def test_each_rank_gets_its_own_cases_and_all_of_them_when_there_are_fewer_than_ranks():
    cases = [f"case_{i}" for i in range(5)]
    shares = [rank_share(cases, rank, 2) for rank in range(2)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == cases
    assert rank_share(cases[:1], 1, 2) == cases[:1]


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        trainer = Engine(lambda engine, batch: time.sleep(0.02) or {"loss": 1.0})
        trainer.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        rates = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda engine: rates.append(engine.optimizer.param_groups[0]["lr"])
        )
        # rank 1's clock says the run is almost out of time; rank 0's that it has just begun
        RunBudget(
            evaluator=None,
            metric_name="acc",
            publisher=None,
            stats_path=os.path.join(out, f"stats_{rank}.json"),
            max_steps=STEPS,
            max_seconds=600.0,
            val_every=STEPS,
            peak_learning_rate=0.01,
            started_at=time.time() - (594.0 if rank == 1 else 0.0),
            fine_tuning=False,
            details={},
            main=rank == 0,
        ).attach(trainer)
        trainer.run([0] * STEPS, max_epochs=1)
        shared = from_rank0({"from": rank})
        with open(os.path.join(out, f"rank_{rank}.json"), "w") as f:
            json.dump({"steps": trainer.state.iteration, "rates": rates, "shared": shared}, f)
    finally:
        dist.destroy_process_group()


def test_a_time_limit_reached_by_one_rank_stops_every_rank_at_the_same_step_and_rate(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] < STEPS  # rank 0 alone would have run all its steps
    assert ranks[0]["rates"] == ranks[1]["rates"]  # both follow the further clock (rank 1's)
    assert ranks[0]["rates"][-1] < 0.01 * 0.1
    assert ranks[0]["shared"] == ranks[1]["shared"] == {"from": 0}
    assert (tmp_path / "stats_0.json").exists() and not (tmp_path / "stats_1.json").exists()  # rank 0 reports
