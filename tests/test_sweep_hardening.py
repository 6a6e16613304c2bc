"""A sweep's storage bounded in time (issue 34): a server that never answers, a database that goes
away for a while and one that stays away. Real servers: a TCP socket that accepts and never
replies, and the PostgreSQL 15 server of ``tests/test_sweeps.py`` stopped and started with pg_ctl.
The bad spaces (values the config refuses, Optuna's refusals, the trial bound) are rows of
``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers import changes, tiny_config, tree, write_config
from test_sweeps import postgres_server, quiet, start_server, stop_server, write_space

import sweep
from app.sweeps import storage
from logger.logger import close_log_files


def test_storage_settings_bound_every_wait_and_the_url_wins():
    kwargs = storage.engine_kwargs("postgresql+psycopg2://u:p@h/db")
    assert kwargs["connect_args"] == {
        "connect_timeout": storage.CONNECT_TIMEOUT,
        "options": f"-c statement_timeout={storage.STATEMENT_TIMEOUT * 1000}",
        "tcp_user_timeout": storage.CONNECT_TIMEOUT * 1000,
    }
    mine = storage.engine_kwargs("postgresql://u@h/db?connect_timeout=5&options=-c%20statement_timeout%3D1000")
    assert mine["connect_args"] == {"tcp_user_timeout": storage.CONNECT_TIMEOUT * 1000}  # the URL's own reach psycopg2 untouched
    assert storage.engine_kwargs("sqlite:///x.db") == {"connect_args": {"timeout": 60}}


def test_a_server_that_accepts_and_never_answers_is_one_line_and_leaves_no_lock(tmp_path, capsys):
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_and_say_nothing() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    url = f"postgresql+psycopg2://sweeper:secret@127.0.0.1:{server.getsockname()[1]}/db?connect_timeout=2&sslmode=disable"  # libpq's least; one attempt, not SSL then plain
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=1))
    space = write_space(tmp_path, {"trials": 1, "params": {"optimizer.args.lr": {"low": 0.001, "high": 0.01}}})
    before = tree(tmp_path)
    capsys.readouterr()
    started = time.monotonic()
    try:
        code = sweep.main(["-c", str(config), "--space", str(space), "--storage", url])
    finally:
        server.close()
        for connection in held:
            connection.close()
        close_log_files()
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 30, err
    assert err.startswith("error: --storage: cannot open postgresql+psycopg2://sweeper:***@127.0.0.1:") and err.count("\n") == 1, err
    assert "timeout expired" in err and "waits at most 2 s" in err and "secret" not in err
    assert held, "the server never saw the connection"
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))  # no lock file, no sweep folder


def when(path: Path, then, timeout: float = 120) -> threading.Thread:
    """``then()`` in a thread as soon as ``path`` exists (a trial's first epoch is written)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_database_away_for_a_while_is_waited_for_and_one_away_too_long_leaves_the_trial_to_resume(tmp_path, capsys, monkeypatch):
    """One worker, two trials: the server stops for a second in trial 0 (retried: the sweep goes on),
    then stops for good in trial 1 (one line, exit 2); once it is back, the same command resumes trial 1."""
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=3, limit_batches=1))
    space = write_space(tmp_path, {"trials": 2, "sampler": "random", "pruner": "median", "heartbeat": 0, "params": {"optimizer.args.lr": {"low": 1e-3, "high": 1e-2}}})
    folder = tmp_path / "saved" / "tiny" / "sweeps" / "space"
    with postgres_server() as url:
        server = Path(url.split("host=")[1])
        argv = [str(arg) for arg in ["-c", config, "--space", space, "--storage", url]]

        def outage() -> None:
            stop_server(server, "fast")
            time.sleep(1)
            start_server(server)

        def gone() -> None:
            monkeypatch.setattr(storage, "RETRY_SECONDS", 1.0)  # read at each call: from now on one second
            stop_server(server, "fast")

        # Each when a trial's first epoch is written: its next report and its result meet the outage.
        watchers = [when(folder / "trial-0000" / "metrics.jsonl", outage), when(folder / "trial-0001" / "metrics.jsonl", gone)]
        capsys.readouterr()
        code = sweep.main(argv)
        close_log_files()
        for watcher in watchers:
            watcher.join()
        out, err = capsys.readouterr()  # the log is on stdout, the error line on stderr
        assert "is unreachable" in out and "answers again" in out, out[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and "Traceback" not in err and len(errors) == 1, err
        assert errors[0].startswith(f"error: --storage: {url} did not answer for 1 s") and "run the same command again" in errors[0]
        assert (folder / "trial-0001" / "checkpoints" / "last.pth").exists()

        start_server(server)
        assert quiet(sweep.main, argv) == 0  # the same command, once it is back
        trials = optuna.load_study(study_name="space", storage=url).trials
        assert sorted((t.user_attrs["slot"], t.state.name) for t in trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
        assert [len(json.loads((folder / name / "manifest.json").read_text())["resumes"]) for name in ("trial-0000", "trial-0001")] == [0, 1]
        epochs = [json.loads(line)["epoch"] for line in (folder / "trial-0001" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]  # resumed from its own checkpoint, not started again
