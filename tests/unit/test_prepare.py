"""lib.trainers.cmfnet._prepare_in_parallel: a run's deterministic data is computed in several processes
and lands in the disk cache that the run then reads."""

import os

import torch
from monai.data import PersistentDataset
from monai.transforms import Transform

from lib.trainers.cmfnet import _prepare_in_parallel


class RecordProcess(Transform):
    """Deterministic: what a cached item records is the process that computed it."""

    def __call__(self, data):
        return {**data, "pid": os.getpid()}


def test_cases_are_prepared_in_parallel_processes_into_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    train = PersistentDataset([{"case": f"c{i}"} for i in range(3)], RecordProcess(), cache_dir=tmp_path / "cache")
    validation = PersistentDataset([{"case": "held_out"}], RecordProcess(), cache_dir=tmp_path / "cache")
    _prepare_in_parallel([train, validation])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
    # read back here, from the cache: computed by two other processes, not this one
    pids = {item["pid"] for item in [*train, *validation]}
    assert os.getpid() not in pids and len(pids) == 2
    # a case added later is the only one to prepare: alone, it is left to the run (no workers read the others)
    train.data.append({"case": "new"})
    _prepare_in_parallel([train, validation])
    assert train[3]["pid"] == os.getpid()


def test_a_single_item_is_left_to_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    dataset = PersistentDataset([{"case": "only"}], RecordProcess(), cache_dir=tmp_path / "cache")
    _prepare_in_parallel([dataset])
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))
    assert dataset[0]["pid"] == os.getpid()
