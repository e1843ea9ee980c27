"""`dslc search --engine ray`: the trials run as tasks of a Ray instance (here a local one with
2 CPUs) and give the same table as local processes for the same seed: the same trials,
points, metrics and best epochs. Skipped without the `ray` extra."""
from __future__ import annotations

import json

import pytest

from helpers import run_cli as run, search_net

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")

SPACE = "lr = loguniform(1e-3, 1e-1)\n        hidden = choice(8, 16)"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _table(report: dict) -> list[tuple]:
    return [(t["id"], t["params"], t["status"], t["best"], t["best_epoch"]) for t in report["trials"]]


def test_ray_tasks_give_the_table_of_local_processes(tmp_path, capsys, local_ray):
    net = search_net(tmp_path, SPACE)
    common = ("search", net, "--trials", "3", "--seed", "5", "--device", "reference", "--json")
    code, out, err = run(capsys, *common, "--out", tmp_path / "local", "--jobs", "2")
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run(capsys, *common, "--out", tmp_path / "ray", "--engine", "ray")
    assert code == 0, err
    remote = json.loads(out)
    assert "ray tasks, 2 CPUs" in err and all(t["status"] == "done" for t in remote["trials"])
    assert _table(remote) == _table(local)
    # the same command again finds every trial done, as a local search would
    code, out, err = run(capsys, *common, "--out", tmp_path / "ray", "--engine", "ray")
    assert code == 0 and "trials to train" not in err


def test_an_address_needs_the_ray_engine(tmp_path, capsys):
    net = search_net(tmp_path, SPACE)
    code, _, err = run(capsys, "search", net, "--address", "ray://nowhere:10001")
    assert code == 2 and "--address names a Ray cluster; it goes with --engine ray" in err
