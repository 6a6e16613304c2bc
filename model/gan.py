"""A small GAN on the digits, the worked example of several optimizers (``configs/gan.json``).

Three pieces of user code, each where the template looks for it:

- :class:`GAN`, one model with two children, ``generator`` (noise -> an 8x8 image) and
  ``discriminator`` (an image -> a logit, "real"); the config's ``optimizer`` gives each child an
  optimizer of its own by module-name prefix (``"params": "discriminator."``), so checkpoints,
  resume, EMA and the learning-rate columns (``lr_discriminator``, ``lr_generator``) come free;
- :func:`gan_losses`, the config's ``loss``: one loss per optimizer, by name, from the
  discriminator's logits (the standard loss for it, the non-saturating one for the generator);
- :class:`GANTrainer`, whose ``training_step`` draws the noise and returns
  ``{"discriminator": ..., "generator": ...}``: the engine does each backward (into that
  optimizer's parameters only), accumulation, autocast, clipping and the steps, in the config's
  order. It writes samples of fixed noise to TensorBoard at each epoch's end (``samples``), and
  its ``predict_step`` is what ``predict.py`` writes: one generated sample per input row.

The noise of a training step comes from torch's generator (part of every checkpoint), so a resume
draws what an uninterrupted run draws. Validation and ``test.py`` draw from a generator seeded by
``trainer.args.sample_seed`` at each evaluation (their losses compare across epochs); so do the
TensorBoard samples and ``predict.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from base import BaseModel
from trainer import Trainer

PIXEL_MEAN, PIXEL_STD = 0.3, 0.4
"""The digits data loader's normalisation (``data_loader/data_loaders.py``): the generator's pixels
in [0, 1] are mapped alike, so real and generated images share one range."""


class GAN(BaseModel):
    """``generator``: ``(N, latent)`` noise -> ``(N, 1, 8, 8)`` images; ``discriminator``: ``(N, 1, 8, 8)``
    -> ``(N,)`` logits that the image is real. The forward is the discriminator (what the default
    steps and ``predict.py`` without a ``predict_step`` would run).

    Args:
        latent: size of the noise.
        hidden: width of each network's hidden layer.
    """

    def __init__(self, latent: int = 16, hidden: int = 128):
        super().__init__()
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 64), nn.Sigmoid())
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Images for ``noise``, normalised like the data."""
        return ((self.generator(noise) - PIXEL_MEAN) / PIXEL_STD).view(-1, 1, 8, 8)

    def judge(self, images: torch.Tensor) -> torch.Tensor:
        return self.discriminator(images).squeeze(-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge(images)


def gan_losses(output: dict[str, torch.Tensor], target: Any) -> dict[str, torch.Tensor]:
    """One loss per optimizer from the discriminator's logits: ``real`` (on data), ``fake`` (on
    generated images, detached from the generator) and, when the generator steps, ``fooled`` (the
    same images through the generator). The labels (``target``) are unused."""
    real, fake = output["real"].float(), output["fake"].float()  # under bf16 autocast: the losses in float32
    losses = {
        "discriminator": F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    }
    if "fooled" in output:  # the non-saturating generator loss: -log D(G(z))
        fooled = output["fooled"].float()
        losses["generator"] = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
    return losses


class GANTrainer(Trainer):
    """Adversarial steps over the config's two optimizers; ``trainer.args``: ``sample_seed`` (the noise of
    validation, TensorBoard samples and ``predict.py``) and ``samples`` (images to TensorBoard per epoch)."""

    def __init__(self, *args: Any, sample_seed: int = 0, samples: int = 16, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sample_seed, self.samples = sample_seed, samples
        self.fixed_noise = self.noise(samples, torch.Generator().manual_seed(sample_seed))
        self.predict_noise = torch.Generator().manual_seed(sample_seed)  # predict.py: continued batch after batch
        self.validation_noise = torch.Generator()
        self.epoch_end.append(self.log_samples)

    @property
    def gan(self) -> GAN:
        return self.model.module  # with several optimizers there is no DDP wrapper: children may be called directly

    def noise(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """``(rows, latent)`` noise drawn row by row on the CPU: the same rows whatever the batch size."""
        latent = self.gan.latent
        return torch.stack([torch.randn(latent, generator=generator) for _ in range(rows)]).to(self.device)

    def adversarial_output(self, inputs: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        fakes = self.gan.generate(noise)
        output = {"real": self.gan.judge(inputs), "fake": self.gan.judge(fakes.detach())}
        if "generator" in self.stepping:  # skip the generator's pass when it does not step (its "every")
            output["fooled"] = self.gan.judge(fakes)
        return output

    def training_step(self, inputs: torch.Tensor, target: Any) -> tuple[dict[str, torch.Tensor], Any]:
        noise = torch.randn(len(inputs), self.gan.latent, device=self.device)  # torch's generator: checkpointed
        output = self.adversarial_output(inputs, noise)
        return self.loss(output, target), output

    def validation_step(self, inputs: torch.Tensor, target: Any) -> tuple[dict[str, torch.Tensor], Any]:
        fakes = self.gan.generate(self.noise(len(inputs), self.validation_noise))
        output = {"real": self.gan.judge(inputs), "fake": self.gan.judge(fakes), "fooled": self.gan.judge(fakes)}
        return self.loss(output, target), output

    def evaluate(self, *args: Any, **kwargs: Any) -> dict:
        self.validation_noise.manual_seed(self.sample_seed)  # every evaluation sees the same noise
        return super().evaluate(*args, **kwargs)

    def predict_step(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generated image per input row (the inputs only count the rows)."""
        return {"sample": self.gan.generate(self.noise(len(inputs), self.predict_noise))}

    @torch.no_grad()
    def log_samples(self, row: dict) -> None:
        """The generator's images for the fixed noise, to TensorBoard (``samples``) at each epoch's end."""
        was_training = self.gan.training
        self.gan.eval()
        try:
            self.run.tensorboard.add_images("samples", self.gan.generate(self.fixed_noise), self.global_step)
        finally:
            self.gan.train(was_training)
