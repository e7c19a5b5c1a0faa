"""Shared fixtures: a small generated datastore; the real server on 127.0.0.1 comes from benchmarks.server.

Tests run in a random order (pytest-randomly), so none may rely on what another test left behind. A test
that changes what a server holds (its published model, its stored strokes, its training runs) either works
on a case of its own on a module's server, sets up what it needs itself, or takes `fresh_server`: a server
of its own on its own copy of the demo datastore.
"""

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
SERVER_LOG_LINES = 80


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """A demo datastore: 3 cases, scribbles on the first 2 (ground truth in `truth/`)."""
    root = tmp_path_factory.mktemp("demo")
    write_demo(root, cases=3, scribbled=2, final=0, seed=0)
    return root


@pytest.fixture
def fresh_server(demo, tmp_path):
    """A server of this test alone: its own copy of the demo datastore, no model, no training by itself."""
    studies = copy_of_demo(demo, tmp_path)
    with running_server(tmp_path, studies, {"auto_train": "false"}) as server:
        yield server


def copy_of_demo(demo: Path, folder: Path) -> Path:
    """A copy of the demo datastore's studies folder in `folder` (tests change what is stored)."""
    studies = folder / "studies"
    shutil.copytree(demo / "studies", studies)
    return studies


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report ends with the log tail of each server it used (CI shows no other trace of them)."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Server) and value.log.exists():
                tail = value.log.read_text(errors="replace").splitlines()[-SERVER_LOG_LINES:]
                report.sections.append((f"server log ({name}, last {SERVER_LOG_LINES} lines)", "\n".join(tail)))
    return report
