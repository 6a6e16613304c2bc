"""Sweeps (``sweep.py``, ``app/sweeps/``) on Optuna: every trial an ordinary run directory.

A grid sweep with the median pruner is shared by the module (in-process); a worker killed with
SIGKILL mid-epoch is a real process; two workers on one PostgreSQL study (one of them a torchrun
worker) run at once against a server the test starts and stops.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from helpers import ROOT, TESTS_ENV, changes, entry_point, run_script, tiny_config, tree, write_config

import sweep
import train
from logger.logger import close_log_files

EPOCHS, BATCHES = 3, 4
evaluate = entry_point("test.py")


def write_space(folder: Path, space: dict, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def quiet(main, argv: list) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in argv])
    close_log_files()
    return code


def study_of(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


# -- one grid sweep with pruning, shared ---------------------------------------------------------------

GRID_LRS = [0.003, 1e-6, 0.002, 2e-6]  # the tiny ones learn nothing: the pruner stops them after epoch 1


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    config = write_config(tmp, tiny_config(tmp, epochs=EPOCHS, limit_batches=BATCHES, tensorboard=True))
    space = write_space(tmp, {
        "sampler": "grid",
        "pruner": {"type": "median", "args": {"n_startup_trials": 1}},
        "params": {"optimizer.args.lr": {"choices": GRID_LRS}, "arch.args.dropout": {"choices": [0.0]}},
    })  # fmt: skip
    assert quiet(sweep.main, ["-c", config, "--space", space]) == 0
    return tmp / "saved" / "tiny" / "sweeps" / "space"


def test_a_sweep_folder_holds_its_trials_results_best_and_plots(grid_sweep):
    rows = list(csv.DictReader((grid_sweep / "results.csv").open()))
    assert [int(row["number"]) for row in rows] == [0, 1, 2, 3]
    assert [float(row["optimizer.args.lr"]) for row in rows] == GRID_LRS
    states = {int(row["number"]): row["state"] for row in rows}
    assert states[0] == "complete" and states[1] == states[3] == "pruned"
    for row in rows:
        run_dir = grid_sweep / row["run_dir"]
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optimizer"]["args"]["lr"] == float(row["optimizer.args.lr"])  # an ordinary run directory of its values
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert int(row["epochs"]) == len(epochs)
        if row["state"] == "complete":
            assert len(epochs) == EPOCHS and float(row["value"]) == min(epoch["val_loss"] for epoch in epochs)
        else:  # stopped at an epoch boundary, with its checkpoint, and the run says why
            manifest = json.loads((run_dir / "manifest.json").read_text())
            assert len(epochs) < EPOCHS and manifest["ended"]["reason"].startswith("pruned")
            assert torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["progress"]["epoch"] == len(epochs)
    complete = [row for row in rows if row["state"] == "complete"]
    best = json.loads((grid_sweep / "best.json").read_text())
    assert best["value"] == min(float(row["value"]) for row in complete) and best["monitor"] == "min val_loss"
    assert Path(best["run_dir"]).name == next(row["run_dir"] for row in complete if float(row["value"]) == best["value"])
    assert (grid_sweep / "history.png").read_bytes()[:4] == b"\x89PNG"
    study = study_of(grid_sweep)
    assert len(study.trials) == 4 and sorted(t.user_attrs["slot"] for t in study.trials) == [0, 1, 2, 3]


def test_tensorboard_hparams_compare_the_trials(grid_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    complete = [row for row in csv.DictReader((grid_sweep / "results.csv").open()) if row["state"] == "complete"]
    for row in complete:
        events = EventAccumulator(str(grid_sweep / row["run_dir"] / "hparams"))
        events.Reload()
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))
        assert events.Scalars("hparam/val_loss")[0].value == pytest.approx(float(row["value"]))


def test_show_prints_the_trials_best_first_and_a_trial_is_a_run_test_py_takes(grid_sweep, capsys):
    capsys.readouterr()
    assert sweep.main(["--show", str(grid_sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines[2:]]
    values = [float(row[2]) for row in table if row[1] == "complete"]
    assert table[0][1] == "complete" and values == sorted(values)
    best = json.loads((grid_sweep / "best.json").read_text())
    assert quiet(evaluate, ["-r", Path(best["run_dir"]) / "checkpoints" / "best.pth", "--out", grid_sweep.parent / "t.json"]) == 0


def test_running_the_same_sweep_again_trains_nothing_and_a_changed_one_is_refused(grid_sweep, capsys):
    tmp = grid_sweep.parents[3]
    before = tree(grid_sweep)
    capsys.readouterr()
    assert sweep.main(["-c", str(tmp / "config.json"), "--space", str(tmp / "space.yaml")]) == 0
    assert {key for key in changes(before, tree(grid_sweep))} <= {"results.csv", "best.json", "history.png", "importance.png", "study.db"}
    space = yaml.safe_load((tmp / "space.yaml").read_text())
    space["params"]["optimizer.args.lr"]["choices"] = [0.003, 0.001]
    changed = write_space(tmp, space, "changed.yaml")
    before = tree(tmp)
    capsys.readouterr()
    assert sweep.main(["-c", str(tmp / "config.json"), "--space", str(changed), "--study", "space"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --study space: space.params.optimizer.args.lr.choices") and err.count("\n") == 1, err
    assert tree(tmp) == before, changes(before, tree(tmp))
    capsys.readouterr()
    assert sweep.main(["-c", str(tmp / "config.json"), "--space", str(tmp / "space.yaml"), "optimizer.args.weight_decay=0.5"]) == 2
    assert "config.optimizer.args.weight_decay is 0.5 here but 0.0001 in the stored study" in capsys.readouterr().err
    assert tree(tmp) == before


# -- bad spaces: one line, nothing created ------------------------------------------------------------

GOOD = {"trials": 2, "params": {"optimizer.args.lr": {"low": 0.001, "high": 0.01}}}


def edit(**changes):
    def make(space: dict) -> dict:
        data = json.loads(json.dumps(space))
        for key, value in changes.items():
            node = data
            *parents, last = key.split("/")
            for part in parents:
                node = node[part]
            if value is DELETE:
                del node[last]
            else:
                node[last] = value
        return data

    return make


DELETE = object()
BAD_SPACES = [
    ("unknown top key", edit(trails=3), [], "unknown key 'trails'; did you mean 'trials'"),
    ("unknown config key", edit(params={"optimizer.args.lrr": {"low": 0.1, "high": 0.2}}), [], "did you mean 'optimizer.args.lr'?"),
    ("unknown range key", edit(**{"params/optimizer.args.lr/hihg": 0.1}), [], "unknown key 'hihg'; did you mean 'high'"),
    ("low above high", edit(**{"params/optimizer.args.lr/low": 0.1}), [], "low (0.1) must be below high (0.01)"),
    ("log of zero", edit(**{"params/optimizer.args.lr/low": 0.0, "params/optimizer.args.lr/log": True}), [], "log: true needs low above 0"),
    ("log and step", edit(**{"params/optimizer.args.lr/log": True, "params/optimizer.args.lr/step": 0.001}), [], "log and step cannot"),
    ("empty choices", edit(params={"arch.args.dropout": {"choices": []}}), [], "params.arch.args.dropout.choices: must be a non-empty list"),
    ("a list as a choice", edit(params={"arch.args.dropout": {"choices": [[0.1, 0.2]]}}), [], "is not a number, string, boolean or null"),
    ("a paired choice naming an unknown key", edit(params={"variant": {"choices": [{"a": 1}]}}), [], "params.variant = '{\"a\": 1}'"),
    ("a paired choice beside a plain one", edit(params={"variant": {"choices": [{"seed": 1}, 2]}}), [], "when one choice is a mapping of key paths to values, all are"),
    ("a value the config refuses", edit(params={"trainer.epochs": {"choices": [2, 0]}}), [], "params.trainer.epochs = 0: "),
    ("grid with a range", edit(sampler="grid"), [], "sampler grid takes choices only; params.optimizer.args.lr is a range"),
    ("grid smaller than trials", edit(sampler="grid", trials=3, params={"arch.args.dropout": {"choices": [0.0, 0.5]}}), [], "the grid has only 2"),
    ("unknown sampler", edit(sampler="tpee"), [], "sampler: 'tpee' is not one of tpe, random, grid; did you mean 'tpe'?"),
    ("pruner argument", edit(pruner={"type": "median", "args": {"n_startup": 1}}), [], "MedianPruner takes no such argument"),
    ("no trials", edit(trials=DELETE), [], "trials: missing"),
    ("--trials 0", edit(), ["--trials", "0"], "--trials: must be a whole number of at least 1"),
    ("no params", edit(params={}), [], "params: give the keys to search"),
    ("a list", lambda space: [1, 2], [], "the top level of a search space must be a mapping"),
    ("monitor off", edit(), ["trainer.monitor=off"], "trainer.monitor is off; a sweep optimises the monitored value"),
    ("--folds 1", edit(), ["--folds", "1"], "--folds: must be a whole number of at least 2"),
    ("a storage nobody can open", edit(), ["--storage", "nosuchdb://x/y"], "--storage: cannot open nosuchdb://x/y"),
    ("a storage whose driver is missing", edit(), ["--storage", "mysql://u@h/db"], "needs a database driver that is not installed (MySQLdb)"),
    ("a storage in a missing folder", edit(), ["--storage", "sqlite:////nonexistent-folder/s.db"], "--storage: cannot open sqlite:////nonexistent"),
    ("a study name with a slash", edit(), ["--study", "a/b"], "--study: 'a/b' cannot name a folder"),
]


@pytest.mark.parametrize("make, extra, expected", [case[1:] for case in BAD_SPACES], ids=[case[0] for case in BAD_SPACES])
def test_a_bad_space_is_one_line_and_creates_nothing(make, extra, expected, tmp_path, capsys):
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=1))
    space = write_space(tmp_path, make(GOOD))
    before = tree(tmp_path)
    capsys.readouterr()
    assert sweep.main(["-c", str(config), "--space", str(space), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))


def test_a_missing_or_broken_space_file_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1))
    (tmp_path / "broken.yaml").write_text("params: {a: [1, 2\n")
    for space, expected in ((tmp_path / "none.yaml", "none.yaml: "), (tmp_path / "broken.yaml", "invalid YAML")):
        capsys.readouterr()
        assert sweep.main(["-c", str(config), "--space", str(space)]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and not (tmp_path / "saved").exists(), err


# -- a worker killed mid-epoch, and the same command again --------------------------------------------


def test_a_killed_worker_and_the_same_command_again_resume_the_trial_exactly(tmp_path, rng):
    config = tiny_config(tmp_path, epochs=EPOCHS, limit_batches=BATCHES, save_every_n_steps=3)
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"
    space = write_space(tmp_path, {"trials": 3, "sampler": "random", "pruner": "none", "params": {"optimizer.args.lr": {"low": 1e-3, "high": 1e-2, "log": True}}})
    argv = ["-c", str(write_config(tmp_path, config)), "--space", str(space), "--trust-checkpoint"]
    passes = 1 + EPOCHS * BATCHES  # trial 0's: the pre-flight batch and its training batches
    at = passes + 1 + rng.randrange(BATCHES + 1, EPOCHS * BATCHES)  # in trial 1, after its first checkpoint
    killed = run_script("sweep.py", *argv, env={**TESTS_ENV, "SIGNAL_NAME": "SIGKILL", "SIGNAL_COUNT": "process", "SIGNAL_AT_BATCH": str(at)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = tmp_path / "saved" / "tiny" / "sweeps" / "space"
    assert (folder / "trial-0001" / "checkpoints" / "last.pth").exists() and not (folder / "trial-0002").exists()

    assert quiet(sweep.main, argv) == 0  # the same command
    study = study_of(folder)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(t.user_attrs["slot"] for t in study.trials) == [0, 1, 2] and [t.number for t in study.trials] == [0, 1, 2]
    manifest = json.loads((folder / "trial-0001" / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1  # resumed from its own last.pth, not restarted

    straight = tmp_path / "straight.json"
    shutil.copy(folder / "trial-0001" / "config.json", straight)
    assert quiet(train.main, ["-c", straight, "--run-id", "straight", "--trust-checkpoint"]) == 0
    resumed = torch.load(folder / "trial-0001" / "checkpoints" / "last.pth", weights_only=True)["model"]
    fresh = torch.load(tmp_path / "saved" / "tiny" / "straight" / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert resumed.keys() == fresh.keys() and all(torch.equal(resumed[key], fresh[key]) for key in resumed)


def test_a_signal_stops_the_trial_at_a_checkpoint_and_it_waits_in_the_study(tmp_path):
    config = tiny_config(tmp_path, epochs=2, limit_batches=BATCHES)
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"
    space = write_space(tmp_path, {"trials": 2, "sampler": "random", "pruner": "none", "params": {"arch.args.dropout": {"low": 0.0, "high": 0.5}}})
    argv = ["-c", write_config(tmp_path, config), "--space", space, "--trust-checkpoint"]
    os.environ.update(SIGNAL_AT_BATCH="3", SIGNAL_NAME="SIGTERM")  # the third pass of trial 0's model (this process ran others)
    try:
        assert quiet(sweep.main, argv) == 128 + signal.SIGTERM
    finally:
        for key in ("SIGNAL_AT_BATCH", "SIGNAL_NAME"):
            del os.environ[key]
    folder = tmp_path / "saved" / "tiny" / "sweeps" / "space"
    states = [(t.user_attrs["slot"], t.state.name) for t in study_of(folder).trials]
    assert states == [(0, "WAITING"), (1, "WAITING")]
    assert (folder / "trial-0000" / "checkpoints" / "last.pth").exists()
    assert quiet(sweep.main, argv) == 0
    assert [t.state.name for t in study_of(folder).trials] == ["COMPLETE", "COMPLETE"]
    assert len(json.loads((folder / "trial-0000" / "manifest.json").read_text())["resumes"]) == 1


def test_each_trial_a_cross_validation_whose_objective_is_the_mean_over_folds(tmp_path):
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=2))
    space = write_space(tmp_path, {"trials": 2, "sampler": "random", "params": {"arch.args.dropout": {"choices": [0.0, 0.5]}}})
    assert quiet(sweep.main, ["-c", config, "--space", space, "--folds", "2"]) == 0
    folder = tmp_path / "saved" / "tiny" / "sweeps" / "space"
    for trial in study_of(folder).trials:
        summary = json.loads((folder / f"trial-{trial.user_attrs['slot']:04d}" / "cv_summary.json").read_text())
        assert trial.state.name == "COMPLETE" and trial.value == summary["across"]["val_loss"]["mean"]
        assert [entry["fold"] for entry in summary["per_fold"]] == [0, 1]


# -- two workers at once on one PostgreSQL study --------------------------------------------------------


def as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    """A PostgreSQL tool run as ``postgres`` when the tests run as root (the server refuses root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)


def start_server(folder: Path) -> None:
    options = f"-k {folder} -c listen_addresses='' -c fsync=off"
    as_postgres("pg_ctl", "-D", str(folder / "data"), "-o", options, "-l", str(folder / "log"), "-w", "start")


def stop_server(folder: Path, mode: str = "immediate") -> None:
    as_postgres("pg_ctl", "-D", str(folder / "data"), "-m", mode, "-w", "stop")


@contextlib.contextmanager
def postgres_server():
    """A PostgreSQL 15 server of its own on a Unix socket in a temporary folder (its URL's ``host``),
    stopped and removed at the end."""
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    folder.chmod(0o777)
    try:
        as_postgres("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        start_server(folder)
        try:
            as_postgres("createdb", "-h", str(folder), "-U", "postgres", "sweeps")
            yield f"postgresql+psycopg2://postgres@/sweeps?host={folder}"
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):  # a test may have stopped it
                stop_server(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_one_postgresql_study_finish_exactly_the_total(tmp_path):
    """One plain worker and one torchrun worker (DDP trials), with save dirs of their own (no shared disk)."""
    trials = 6
    space = write_space(tmp_path, {"trials": trials, "sampler": "tpe", "pruner": "none", "params": {"optimizer.args.lr": {"low": 1e-3, "high": 1e-2, "log": True}}})
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=3))
    with postgres_server() as url:
        common = ["-c", str(config), "--space", str(space), "--storage", url]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        workers = [
            subprocess.Popen([sys.executable, "sweep.py", *common, f"trainer.save_dir={tmp_path / 'a'}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            subprocess.Popen([*torchrun, "sweep.py", *common, f"trainer.save_dir={tmp_path / 'b'}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        ]  # fmt: skip
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], "\n".join(output[-3000:] for output in outputs)
        study = optuna.load_study(study_name="space", storage=url)
        assert len(study.trials) == trials and all(t.state.name == "COMPLETE" for t in study.trials)
        assert sorted(t.user_attrs["slot"] for t in study.trials) == list(range(trials))
        assert sorted(t.number for t in study.trials) == list(range(trials))
    made = {side: sorted(p.name for p in (tmp_path / side / "tiny" / "sweeps" / "space").glob("trial-*")) for side in "ab"}
    assert sorted(made["a"] + made["b"]) == [f"trial-{slot:04d}" for slot in range(trials)] and made["a"] and made["b"], made
    for name in made["b"]:
        manifest = json.loads((tmp_path / "b" / "tiny" / "sweeps" / "space" / name / "manifest.json").read_text())
        assert manifest["world_size"] == 2


def test_workers_that_open_a_new_storage_together_all_open_it(tmp_path):
    """Workers started together on a new study race to create Optuna's tables; without the retry
    every round here had a loser ("table ... already exists")."""
    import threading

    from app.sweeps.study import open_storage

    def open_it(url: str, barrier: threading.Barrier, errors: list) -> None:
        barrier.wait()
        try:
            open_storage(url, 0)
        except Exception as exc:  # noqa: BLE001 - what a loser of the race saw is the finding
            errors.append(str(exc))

    for round_ in range(3):
        url, barrier, errors = f"sqlite:///{tmp_path / f'race-{round_}.db'}", threading.Barrier(4), []
        threads = [threading.Thread(target=open_it, args=(url, barrier, errors)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


def test_the_setup_lock_serialises_workers_and_leaves_no_file(tmp_path):
    """The lock file goes when it is released; a waiter that was blocked on the removed file takes the
    new one, so two workers never hold it at once."""
    import threading
    import time

    from app.sweeps.locks import SetupLock

    path = tmp_path / "sweeps" / ".space.lock"
    inside, overlaps = [], []

    def work() -> None:
        with SetupLock(path) as lock:
            overlaps.append(len(inside))
            inside.append(1)
            assert os.fstat(lock.fd).st_ino == os.stat(path).st_ino
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [0] * 6 and not path.exists()


def test_a_trial_left_running_unsigned_by_a_worker_killed_while_taking_it_is_taken_over(tmp_path):
    """A worker killed between winning a trial (WAITING -> RUNNING) and signing it left a trial that
    no heartbeat and no lock would ever free: on the default storage, the next worker takes it."""
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=2))
    space = write_space(tmp_path, {"trials": 1, "sampler": "random", "pruner": "none", "params": {"optimizer.args.lr": {"low": 1e-3, "high": 1e-2, "log": True}}})
    assert quiet(sweep.main, ["-c", config, "--space", space]) == 0
    folder = tmp_path / "saved" / "tiny" / "sweeps" / "space"
    study = study_of(folder)
    study.enqueue_trial({"optimizer.args.lr": 0.005}, user_attrs={"slot": 1})
    waiting = next(t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING")
    study._storage.set_trial_state_values(waiting._trial_id, state=optuna.trial.TrialState.RUNNING)
    assert quiet(sweep.main, ["-c", config, "--space", space, "--trials", "2"]) == 0
    trials = study_of(folder).trials
    assert sorted((t.user_attrs["slot"], t.state.name) for t in trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert trials[1].params == {"optimizer.args.lr": 0.005}


def test_a_trial_whose_values_the_data_refuses_fails_and_the_sweep_goes_on(tmp_path):
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=2))
    space = write_space(tmp_path, {"sampler": "grid", "params": {"data_loader.args.batch_size": {"choices": [0, 32]}, "arch.args.dropout": {"low": 0, "high": 1}}})
    assert quiet(sweep.main, ["-c", config, "--space", space]) == 2  # the grid needs choices only: dropout is a range
    # A batch of 0 is refused before the study (test_sweep_hardening.py); one larger than the split,
    # with drop_last, only the data can refuse.
    space = write_space(tmp_path, {"sampler": "grid", "params": {"data_loader.args.batch_size": {"choices": [4096, 32]}}})
    assert quiet(sweep.main, ["-c", config, "--space", space, "data_loader.args.drop_last=true"]) == 0
    trials = study_of(tmp_path / "saved" / "tiny" / "sweeps" / "space").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert "data_loader.args.batch_size" in trials[0].user_attrs["failure"]


def test_whole_number_ends_for_a_float_key_make_a_float_range(tmp_path):
    from app.config import Config
    from app.sweeps.space import read_space

    config = write_config(tmp_path, tiny_config(tmp_path))
    space = write_space(tmp_path, {"trials": 1, "params": {"arch.args.dropout": {"low": 0, "high": 1}, "trainer.epochs": {"low": 1, "high": 3}}})
    kinds = {param.key: param.kind for param in read_space(space, None, Config.from_file(config), str(config), []).params}
    assert kinds == {"arch.args.dropout": "float", "trainer.epochs": "int"}
