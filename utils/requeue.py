"""After the requeue signal stopped a run with a checkpoint: put the Slurm job back in the queue.

Slurm's ``--signal=B:USR1@120`` warns a job before its time limit; the run saves and stops on
every rank (``utils/signals.py``), and then rank 0 runs ``scontrol requeue $SLURM_JOB_ID``. Slurm
ends the job and starts it again later with the identical command, which ``--auto-resume`` turns
into a continuation. Where that cannot happen (no ``scontrol`` on PATH, not inside a Slurm job, or
``scontrol`` refused) one line says so and the exit code is :data:`REQUEUE_FAILED`, for a wrapper
to act on; the checkpoint is written either way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

REQUEUE_FAILED = 75
"""Exit code when the run stopped for a requeue that could not be made (``EX_TEMPFAIL``: try again later)."""


def requeue_job(env: dict[str, str] | None = None) -> int | None:
    """Requeue this Slurm job; None when it was requeued, else :data:`REQUEUE_FAILED` (said in one line on stderr)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    job = job or env.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if not job or scontrol is None:
        why = "not inside a Slurm job (no SLURM_JOB_ID)" if not job else "scontrol is not on PATH"
        print(
            f"error: stopped for a requeue with a checkpoint, but {why}; run the same command again to continue (exit {REQUEUE_FAILED})",
            file=sys.stderr,
        )
        return REQUEUE_FAILED
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        print(
            f"error: scontrol requeue {job} failed ({said[0] if said else f'exit {done.returncode}'}); run the same command again to continue (exit {REQUEUE_FAILED})",
            file=sys.stderr,
        )
        return REQUEUE_FAILED
    print(f"requeued Slurm job {job}: it continues this run when it starts again", flush=True)
    return None
