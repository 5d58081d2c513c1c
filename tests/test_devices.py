"""CPU threads: the ``threads`` params of the faces, reference/evaluate and train stages."""

import os
import subprocess
import sys
import time

import pytest
import torch

from pipeline import devices
from pipeline.devices import (
    busy_cores,
    busy_machine_warning,
    cpu_threads,
    use_threads,
    use_training_threads,
)
from pipeline.params import validate_params


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine whose busy cores (other jobs' load) the test sets."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    load = {"value": 0.0}
    monkeypatch.setattr(devices, "busy_cores", lambda: load["value"])
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


def test_busy_cores_reads_the_machine_now():
    """Measured over a quarter second from /proc/stat (not the load average, which lags by a
    minute behind a stage that has just finished): a number of cores, never more than it has."""
    busy = busy_cores(0.1)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # running, not starting up
        assert busy_cores(0.3) >= 0.5  # a core is busy whatever else runs
    finally:
        spinner.kill()
        spinner.wait()


def test_training_takes_every_core_whatever_its_workers_and_the_load(machine):
    """bench/threads.py: on 2 cores 2 threads beat 1 by 1.5-1.7x at 32-256 px with 0-2
    loader workers, which mostly wait for the step; and a resumed run must reduce its floats
    as the run it resumes did, so the load is left out."""
    before = torch.get_num_threads()
    try:
        machine["value"] = 2.6
        assert use_training_threads("auto") == 4 and torch.get_num_threads() == 4
        assert use_training_threads(1) == 1
    finally:
        torch.set_num_threads(before)


def test_training_on_a_busy_machine_is_warned_and_told_the_count(machine):
    """Training's threads ignore the load, so the stage says when other jobs hold cores
    its threads need (2 threads with one of 2 cores busy: 2.1 images/s against 50.2 on one
    thread, docs/quality.md) and which count fits; not when the cores are free or for one
    thread."""
    assert busy_machine_warning(4) is None
    machine["value"] = 0.4  # background noise: still four idle cores
    assert busy_machine_warning(4) is None
    machine["value"] = 1.0
    warning = busy_machine_warning(4)
    assert "1.0 of 4 cores busy" in warning and "-S train.threads=3" in warning
    machine["value"] = 3.8
    assert "-S train.threads=1" in busy_machine_warning(4)
    assert busy_machine_warning(1) is None
