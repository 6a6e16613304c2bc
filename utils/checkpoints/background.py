"""Checkpoint writes in a background thread (``trainer.async_save``): the loop pays for a copy only.

A save copies its state out of the model into CPU memory (:func:`copied`: every tensor cloned,
so the next optimizer step cannot change what is being written) and hands the write to one
worker thread. At most one write is in flight: the next save waits for the previous one first,
which also bounds the memory to one extra copy of the state. The write itself is the synchronous
one (temporary file, fsync, rename), so a crash mid-write leaves the previous checkpoint intact.
Links (``best``, ``epoch-N``) and pruning run in the same thread after the write they follow.
A failed write is raised at the next save, link or :meth:`BackgroundWriter.wait` (the loop waits
at a stop and at the run's end, so nothing is reported late or lost).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def copied(value: Any) -> Any:
    """``value`` with every tensor cloned to CPU memory (dicts, lists and tuples rebuilt; the rest as is)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copied(item) for item in value)
    return value


class BackgroundWriter:
    """One worker thread, jobs in order; :meth:`wait` for all of them (and their errors)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[Future] = []

    def submit(self, job: Callable[[], Any]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._jobs.append(self._pool.submit(job))

    def wait(self) -> None:
        """Until every submitted job has run; the first failure is raised (once)."""
        jobs, self._jobs = self._jobs, []
        failure = None
        for job in jobs:
            error = job.exception()
            failure = failure or error
        if failure is not None:
            raise failure

    @property
    def busy(self) -> bool:
        return any(not job.done() for job in self._jobs)
