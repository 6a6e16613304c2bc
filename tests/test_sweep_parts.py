"""The sweep worker's parts on their own (``app/sweeps/client.py``, ``slots.py``): a real SQLite study
and real locks, no training. Whole sweeps are in ``tests/test_sweeps.py``."""

from __future__ import annotations

import pytest
from helpers import tiny_config, write_config
from optuna.trial import TrialState
from test_sweeps import write_space

from app.config import Config, read_config_file
from app.sweeps.client import SWEEP_FILE, StudyClient
from app.sweeps.jobs import SweepRequest
from app.sweeps.slots import SlotTaker
from app.sweeps.space import read_space


@pytest.fixture
def client(tmp_path) -> StudyClient:
    """An opened study of three slots (random sampler, heartbeats off) in ``<tmp>/saved/.../sweeps/space``."""
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1))
    space = write_space(tmp_path, {"trials": 3, "sampler": "random", "heartbeat": 0, "params": {"optimizer.args.lr": {"low": 1e-3, "high": 1e-2}}})
    request = SweepRequest(config=str(config), space=str(space))
    base = Config.from_file(config)
    opened = StudyClient(request, base, read_config_file(config), read_space(space, None, base, str(config), []))
    opened.open(opened.identity())
    return opened


def states(client: StudyClient) -> list[tuple[int, str]]:
    return sorted((t.user_attrs["slot"], t.state.name) for t in client.study.get_trials(deepcopy=False))


def test_the_client_opens_the_slots_and_describes_the_sweep(client):
    assert states(client) == [(0, "WAITING"), (1, "WAITING"), (2, "WAITING")]
    assert (client.folder / SWEEP_FILE).exists() and not (client.folder.parent / ".space.lock").exists()
    again = StudyClient(client.request, client.base, client.raw, client.space)
    again.open(again.identity())  # the same sweep: the same study, no new slots
    assert len(again.study.get_trials(deepcopy=False)) == 3


def test_slot_takers_take_the_lowest_free_slot_a_released_running_one_is_taken_over_and_ends_are_told(client):
    first, second = SlotTaker(client), SlotTaker(client)
    job = first.next_job()
    assert (job.slot, job.action) == (0, "new") and 1e-3 <= job.values["optimizer.args.lr"] <= 1e-2
    held = second.next_job()
    assert held.slot == 1  # slot 0 is RUNNING and its lock held
    assert states(client) == [(0, "RUNNING"), (1, "RUNNING"), (2, "WAITING")]
    first.release()  # as a worker that died: RUNNING, signed by this host and folder, its lock free
    third = SlotTaker(client)
    adopted = third.next_job()
    assert adopted.slot == 0 and adopted.trial_id == job.trial_id and adopted.values == job.values  # same trial, same values

    client.record_failure(adopted, "data_loader.args.batch_size: too large")
    third.release()
    client.record_waiting(held)
    second.release()
    trials = {t.user_attrs["slot"]: t for t in client.study.get_trials(deepcopy=False)}
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure"] == "data_loader.args.batch_size: too large"
    assert trials[1].state == TrialState.WAITING and trials[1].system_attrs.get("worker") is None
    last = SlotTaker(client)
    assert last.next_job().slot == 1  # waiting again: the next worker takes it, before slot 2
    last.release()
