"""Knowledge distillation on the digits, the worked example of a frozen teacher (``configs/distill.json``).

A small student (``arch``, any classifier) learns from the labels and from a trained teacher at
once. The teacher is a run's checkpoint named in the config, ``trainer.args.teacher`` (a path,
relative to where ``train.py`` runs, like ``data_dir``), loaded by the public
:func:`app.loading.load_model`: its config is rebuilt under the checkpoint trust rule, it is frozen
and kept outside ``self.model``, so the student's checkpoints hold none of it and the run's
``manifest.json`` lists the file with its sha256 (``data.loaded_models``).

The training loss is Hinton et al.'s mix (:func:`distillation_loss`)::

    alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

where CE is the config's ``loss`` (``nll_loss`` of the student's log-probabilities: the
cross-entropy) and ``p_T = softmax(logits / T)``; ``T^2`` keeps the soft term's gradients on the scale of the hard
one's whatever the temperature. Both terms are logged (``ce``, ``kl``). Validation, ``test.py``
and the monitor keep the config's ``loss`` on the labels alone (``val_loss``), so a distilled
student compares with one trained without a teacher.

A resume checks that the teacher file is the one the run started with (its sha256 is a part of
every checkpoint): a changed teacher would silently train another experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.loading import file_digest, load_model
from trainer import Trainer
from utils.errors import UserError


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence of the student's softened distribution from the teacher's, averaged over the
    batch. ``student`` and ``teacher`` are logits or log-probabilities (``log_softmax`` outputs): a
    softmax ignores the shift between them."""
    student, teacher = student.float() / temperature, teacher.float() / temperature  # under bf16 autocast: in float32
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True, reduction="batchmean")


def distillation_loss(ce: torch.Tensor, kl: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """``alpha * ce + (1 - alpha) * temperature**2 * kl``."""
    return alpha * ce + (1 - alpha) * temperature**2 * kl


class TeacherFile:
    """The checkpoint part that names the teacher a run distils from (its sha256), so a resume
    with another teacher file is refused instead of mixing two experiments."""

    def __init__(self, path: str, sha256: str):
        self.path, self.sha256 = path, sha256

    def state_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}

    def load_state_dict(self, state: dict) -> None:
        if state["sha256"] != self.sha256:
            raise UserError(
                f"trainer.args.teacher: {self.path} is not the teacher this run started with ({state['path']}, sha256 "
                f"{state['sha256'][:12]}...); resume with that file, or start a new run"
            )


class DistillTrainer(Trainer):
    """The template's Trainer with a frozen teacher: ``trainer.args`` ``teacher`` (a run's checkpoint),
    ``alpha`` (the weight of the labels' cross-entropy, 0 to 1) and ``temperature`` (> 0)."""

    def __init__(self, *args: Any, teacher: str, alpha: float = 0.5, temperature: float = 4.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not 0 <= alpha <= 1:
            raise UserError(f"trainer.args.alpha: {alpha} is not between 0 and 1 (the share of the labels' cross-entropy)")
        if temperature <= 0:
            raise UserError(f"trainer.args.temperature: {temperature} must be positive")
        if not Path(teacher).exists():
            raise UserError(
                f"trainer.args.teacher: {teacher} does not exist; train a teacher first "
                f"(python train.py -c configs/digits.yaml --run-id teacher) or point trainer.args.teacher at a run's checkpoint"
            )
        self.alpha, self.temperature = alpha, temperature
        self.teacher = load_model(teacher).requires_grad_(False).to(self.device)  # eval mode, outside self.model
        self.teacher_file = TeacherFile(teacher, file_digest(Path(teacher)))

    def state_parts(self) -> dict:
        return {**super().state_parts(), "teacher": self.teacher_file}

    def training_step(self, inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
        output = self.forward(inputs)
        with torch.no_grad():
            taught = self.teacher(inputs)
        ce, kl = self.loss(output, target, inputs), soft_kl(output, taught, self.temperature)
        self.log("ce", ce)
        self.log("kl", kl)
        return distillation_loss(ce, kl, self.alpha, self.temperature), output
