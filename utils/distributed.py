"""torch.distributed as torchrun sets it up: environment variables in, process groups out.

We never write our own engine. ``torchrun`` sets RANK, LOCAL_RANK and WORLD_SIZE; we join the
default process group (NCCL on CUDA, gloo on CPU) and add one gloo group for small control
messages (stop flags, RNG states) so that they never wait on the GPU stream.

Under ``srun python train.py`` (one Slurm task per process, no torchrun) the same variables are
made from Slurm's (:func:`adopt_slurm_environment`), so the rest of the code sees one launcher.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from utils.errors import ReportedByRankZero, UserError

T = TypeVar("T")

_control_group = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 alone writes the run directory, logs to files, TensorBoard and checkpoints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def adopt_slurm_environment(env: dict | None = None) -> bool:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from a Slurm
    step's variables when torchrun's are absent; whether it did.

    Only inside an ``srun`` step of more than one task (``SLURM_STEP_NUM_TASKS`` > 1, which a batch
    script itself does not have): a plain ``python train.py`` in a batch script stays one process.
    Under ``srun torchrun`` torchrun's own variables are there and win. The master is the step's
    first node; the port is ``MASTER_PORT`` if set, else derived from the job id (the same in every
    task and after a requeue, and unlikely to collide with another job's on the same node).
    """
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) <= 1:
        return False
    tasks = int(env["SLURM_STEP_NUM_TASKS"])
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", str(tasks)))
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(tasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["LOCAL_WORLD_SIZE"] = per_node.split("(")[0].split(",")[0]
    env.setdefault("MASTER_ADDR", first_host(nodes))
    env.setdefault("MASTER_PORT", str(15000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000))
    return True


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist.split("]")[0] + "]"
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def say_once(line: str) -> None:
    """Print ``line`` from the first process only (before the process group exists: by its RANK)."""
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(line, flush=True)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> None:
    """Join the process group that torchrun describes; a no-op for a plain ``python train.py``."""
    global _control_group
    if not launched_by_torchrun() or is_distributed():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    kwargs.update(_restart_store())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
    _control_group = dist.new_group(backend="gloo") if backend != "gloo" else None


def _restart_store() -> dict[str, Any]:
    """After a torchrun restart (``--max-restarts``), the process group's keys in a namespace of this attempt.

    torchrun's workers meet in its agent's store, which outlives a restart: the workers of a later
    attempt found the gloo addresses the killed ones had published there, connected to a port
    nobody listened on, and failed or hung. Keys under ``attempt_<N>`` are this attempt's alone."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart in ("", "0") or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=30))
    return {
        "store": dist.PrefixStore(f"/template/attempt_{restart}", store),
        "rank": int(os.environ["RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
    }


def cleanup(wait: bool = True) -> None:
    """Leave the process group: every rank meets at a barrier first, then destroys it.

    Destroying gloo while another rank still talks to it aborts processes now and then at exit
    ("terminate called without an active exception", SIGABRT). The barrier waits at most a minute:
    a rank that failed alone must not hang the others (torchrun then reports the failure); when a
    peer is known to be gone (``wait`` False), nobody would come, so there is no barrier.
    """
    global _control_group
    if is_distributed():
        if wait:
            try:
                dist.monitored_barrier(group=_control_group, timeout=timedelta(seconds=60))
            except RuntimeError:
                pass  # a rank did not come: it failed, and torchrun says so
        dist.destroy_process_group()
    _control_group = None


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_control_group)


def any_process(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (a CPU all-reduce on the control group)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(tensor.item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (sums and counts, never means of means)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (e.g. the time stamp that names a new run directory)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]


def on_main(work: Callable[[], T]) -> T:
    """``work()`` on rank 0, its result on every rank; an exception there stops every rank (rank 0
    reports a :class:`UserError`, or raises anything else as it came, a bug or a lost database; the
    others exit quietly), so no rank waits for one that has left or goes on with a wrong answer."""
    outcome: tuple[str, Any] = ("ok", None)
    failure: Exception | None = None
    if is_main_process():
        try:
            outcome = ("ok", work())
        except Exception as exc:
            if not is_distributed():
                raise
            outcome, failure = ("error", str(exc)), exc
    kind, value = broadcast_object(outcome)
    if kind == "error":
        if failure is not None and not isinstance(failure, UserError):
            raise failure
        raise ReportedByRankZero(value)
    return value


def agree(check: Callable[[], T]) -> T:
    """``check()`` on every rank; if it raised a :class:`UserError` on any rank, every rank raises
    (rank 0 reports the first error found, the others exit quietly). For checks whose outcome can
    differ between ranks (a file one rank reads), so no rank acts on a result another refused."""
    if not is_distributed():
        return check()
    try:
        result, problem = check(), None
    except UserError as exc:
        result, problem = None, str(exc)
    problems = [p for p in gather_objects(problem) if p is not None]
    if problems:
        raise ReportedByRankZero(problem or problems[0]) if rank() else UserError(problems[0])
    return result


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks (a CPU all-reduce on the control group)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_control_group)
    return int(tensor.item())


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control_group)
    return out
