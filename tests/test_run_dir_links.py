"""A run directory's own files are written only inside it: a symbolic link among its entries is
refused in one line, never written through (``app/run_dir.py``, ``utils.files.open_own``).

The end-to-end refusals (a resume with ``train.log``, ``checkpoints/``, ``.lock`` ... linked
outside: exit 2, nothing changed anywhere) are rows of ``test_bad_inputs.py``; here, in-process
and without training, the openers themselves and what stays allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import changes, tree

from app.run_dir import LOCK_FILE, RunDirClaim, refuse_links
from logger.logger import add_log_file, close_log_files, get_logger
from logger.metrics_file import MetricsFile
from utils.errors import UserError
from utils.files import OutputLock


def a_run(tmp_path: Path) -> Path:
    run = tmp_path / "saved" / "exp" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "checkpoints" / "last.pth").write_bytes(b"weights")
    return run


def outside_file(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir(exist_ok=True)
    target = tmp_path / "outside" / "victim.txt"
    target.write_text("the user's file\n")
    return target


def test_every_opener_of_a_run_file_refuses_a_link_and_writes_nothing_through_it(tmp_path):
    run = a_run(tmp_path)
    victim = outside_file(tmp_path)
    for name in ("train.log", "metrics.jsonl", LOCK_FILE):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
    before = tree(tmp_path)
    openers = {
        "train.log": lambda: add_log_file(run / "train.log"),
        "metrics.jsonl": lambda: MetricsFile(run / "metrics.jsonl").append({"epoch": 2}),
        LOCK_FILE: lambda: RunDirClaim.open(run),
    }
    try:
        for name, opener in openers.items():
            with pytest.raises(UserError) as caught:
                opener()
            line = str(caught.value)
            assert line.startswith(f"run directory: {run / name} is a symbolic link (to {victim})") and "\n" not in line, line
    finally:
        close_log_files()
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))
    assert not [h for h in get_logger().handlers if getattr(h, "baseFilename", None)]  # no train.log attached


def test_a_claim_file_beside_an_output_is_not_followed(tmp_path):
    victim = outside_file(tmp_path)
    (tmp_path / ".metrics.json.claim").symlink_to(victim)
    before = tree(tmp_path)
    with pytest.raises(UserError, match="metrics.json.claim is a symbolic link"):
        OutputLock(tmp_path / "metrics.json", "--out").acquire()
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", ["train.log", "checkpoints/last.pth", "checkpoints", "notes"])
def test_any_link_inside_a_run_directory_is_refused(name, tmp_path):
    run = a_run(tmp_path)
    victim = outside_file(tmp_path)
    if (run / name).is_dir():
        os.rename(run / name, tmp_path / "outside" / "folder")
        victim = tmp_path / "outside" / "folder"
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    with pytest.raises(UserError, match=f"{run / name} is a symbolic link .*put the file or folder itself in its place"):
        refuse_links(run)


def test_the_run_directory_and_its_parents_may_be_links_and_the_stores_own_links_point_inside(tmp_path):
    """``saved/`` on another disk, a run directory reached through a link: allowed. The DCP store's
    ``last.dcp`` links (to a snapshot inside ``checkpoints/``) are the store's own: allowed."""
    run = a_run(tmp_path / "disk")
    (tmp_path / "saved").symlink_to(tmp_path / "disk" / "saved", target_is_directory=True)
    (tmp_path / "run").symlink_to(run, target_is_directory=True)
    snapshot = run / "checkpoints" / "snapshots" / "step-3"
    snapshot.mkdir(parents=True)
    (run / "checkpoints" / "last.dcp").symlink_to(os.path.relpath(snapshot, run / "checkpoints"))
    for path in (tmp_path / "saved" / "exp" / "run", tmp_path / "run", run):
        refuse_links(path)
    (run / "checkpoints" / "best.dcp").symlink_to(tmp_path / "disk", target_is_directory=True)  # out of the run: refused
    with pytest.raises(UserError, match="best.dcp is a symbolic link"):
        refuse_links(tmp_path / "run")


def test_a_file_appended_in_place_may_not_have_a_second_name(tmp_path):
    """A hard link cannot be told from the file by its path: ``metrics.jsonl`` sharing its bytes with
    a file outside would have that file appended to. Checkpoints (replaced by renames) may share theirs."""
    run = a_run(tmp_path)
    os.link(run / "checkpoints" / "last.pth", run / "checkpoints" / "best.pth")  # what the store itself does
    refuse_links(run)
    os.link(run / "metrics.jsonl", tmp_path / "elsewhere.jsonl")
    with pytest.raises(UserError, match=r"metrics.jsonl has another name \(a hard link\).*replace it with a copy of its own"):
        refuse_links(run)
