"""TensorBoard through ``torch.utils.tensorboard``; a do-nothing stand-in when disabled or not rank 0.

Every scalar is logged against the global optimizer step, epoch rows too (beside an ``epoch``
scalar that maps steps to epochs), so a resumed run can purge whatever the interrupted run wrote
after its checkpoint with one ``purge_step`` and TensorBoard shows one clean curve.

Tags: ``train/<name>`` and ``valid/<name>`` per epoch (loss, each metric, ``samples_per_sec``,
``data_wait``, ``lr`` and ``lr_group<i>``), ``epoch``, ``train/step_loss`` and
``train/step_samples_per_sec`` every ``log_step`` steps; a metric that is a matrix (a confusion
matrix) as an image and a text table under its tag; and, when asked for, ``train/inputs`` (images)
and ``params/<name>`` (histograms) once per epoch. ``tensorboard --logdir saved/`` shows every run.
"""

from __future__ import annotations

import atexit
from pathlib import Path

import torch


class TensorboardWriter:
    """TensorBoard events of one run (scalars, matrices as images and tables); a disabled writer accepts every
    call and writes nothing."""

    def __init__(self, log_dir: Path | None, enabled: bool, purge_step: int | None = None):
        self.writer = None
        if log_dir is not None and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
            # Whatever ends the process early (an error before the loop's own clean-up), the events reach the disk.
            atexit.register(self.close)

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def add_histograms(self, model: torch.nn.Module, step: int) -> None:
        if self.writer is not None:
            for name, param in model.named_parameters():
                self.writer.add_histogram(f"params/{name}", param.detach().float().cpu(), step)

    def add_images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """A batch of (N, C, H, W) images, min-max scaled to [0, 1] for display."""
        if self.writer is not None and images.dim() == 4 and images.shape[1] in (1, 3):
            images = images.detach().float().cpu()[:64]
            low, high = images.amin(), images.amax()
            self.writer.add_images(tag, (images - low) / (high - low + 1e-12), step)

    def add_matrix(self, tag: str, rows: list, step: int) -> None:
        """A 2-D metric (a confusion matrix: true classes down, predictions across) as a heat map,
        each row scaled to its own total, and as a markdown table of the counts."""
        if self.writer is None:
            return
        matrix = torch.tensor(rows, dtype=torch.float64)
        if matrix.dim() != 2:
            return
        shares = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1e-12)
        cell = max(1, 256 // max(matrix.shape))
        image = shares.float().repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        self.writer.add_image(tag, image.unsqueeze(0), step, dataformats="CHW")
        header = "| |" + "|".join(str(j) for j in range(matrix.shape[1])) + "|\n|" + "---|" * (matrix.shape[1] + 1)
        body = "\n".join(f"|**{i}**|" + "|".join(f"{v:g}" for v in row) + "|" for i, row in enumerate(matrix.tolist()))
        self.writer.add_text(tag, f"{header}\n{body}", step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            atexit.unregister(self.close)
