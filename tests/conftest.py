"""Shared fixtures: a small generated datastore; the real server on 127.0.0.1 comes from benchmarks.server."""

import shutil
from pathlib import Path

import pytest

# the server harness lives with the benchmarks, which start servers too; tests import it from here
from benchmarks.server import (  # noqa: F401
    ROOT,
    Server,
    free_port,
    publish_untrained_model,
    running_server,
    wait_for,
    wait_until_serving,
)
from lib.data.demo import write_demo

# Short training runs for tests: a few steps, validated twice.
FAST_TRAIN = {"max_steps": 4, "val_every": 2}


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """A demo datastore: 3 cases, scribbles on the first 2 (ground truth in `truth/`)."""
    root = tmp_path_factory.mktemp("demo")
    write_demo(root, cases=3, scribbled=2, final=0, seed=0)
    return root


def copy_of_demo(demo: Path, folder: Path) -> Path:
    """A copy of the demo datastore's studies folder in `folder` (tests change what is stored)."""
    studies = folder / "studies"
    shutil.copytree(demo / "studies", studies)
    return studies
