"""CPU threads: the ``threads`` params of the faces, reference/evaluate and train stages."""

import os

import pytest
import torch

from pipeline.devices import cpu_threads, use_threads
from pipeline.params import validate_params


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine whose load average the test sets."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    load = {"value": 0.0}
    monkeypatch.setattr(os, "getloadavg", lambda: (load["value"], 0.0, 0.0))
    return load


def test_auto_shares_the_idle_cores_with_the_workers(machine):
    assert cpu_threads("auto") == 4
    assert cpu_threads("auto", workers=1) == 2 and cpu_threads("auto", workers=8) == 1
    machine["value"] = 2.6  # three cores busy with other jobs
    assert cpu_threads("auto") == 1
    machine["value"] = 1.2
    assert cpu_threads("auto") == 3
    assert cpu_threads("auto", load_aware=False) == 4  # training: the same on every run
    machine["value"] = 40.0
    assert cpu_threads("auto") == 1


def test_auto_honours_omp_num_threads(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads("auto", workers=8) == 3 and cpu_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty: not set
    assert cpu_threads("auto") == 4


def test_a_count_is_taken_as_given_and_set(machine):
    before = torch.get_num_threads()
    try:
        assert cpu_threads(3, workers=8) == 3
        assert use_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("section", ["faces", "evaluate", "train"])
def test_threads_param_is_auto_or_a_positive_count(section):
    assert getattr(validate_params({}), section).threads == "auto"
    assert getattr(validate_params({section: {"threads": 2}}), section).threads == 2
    for bad in (0, "many"):
        with pytest.raises(Exception, match=f"{section}.threads"):
            validate_params({section: {"threads": bad}})
