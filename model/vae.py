"""A variational autoencoder on the digits, the worked example of a Trainer subclass (``configs/vae.json``).

Three pieces of user code, each where the template looks for it:

- :class:`VAE`, a model whose output is a dict: ``recon`` (the reconstructed image), ``mu`` and
  ``logvar`` (the latent code's mean and log-variance). ``predict.py`` writes each as a field;
- :func:`vae_loss`, a loss that takes the inputs (it reconstructs them, the labels are unused):
  the negative ELBO, reconstruction error plus KL divergence;
- :class:`VAETrainer`, whose ``training_step`` anneals the KL term's weight from ``1 /
  kl_warmup_epochs`` to 1 over the first epochs (``self.epoch``), so the decoder learns before the
  code is pulled to the prior. Validation keeps the template's step, the full loss, so
  ``val_loss`` compares every epoch on one scale.

Accumulation, AMP, DDP, EMA, checkpoints and exact mid-epoch resume all work around the step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from base import BaseModel
from trainer import Trainer


class VAE(BaseModel):
    """``(N, 1, 8, 8)`` images -> ``{"recon": (N, 1, 8, 8), "mu": (N, latent), "logvar": (N, latent)}``.

    Args:
        in_features: pixels per image (64 for the 8x8 digits).
        hidden: width of the encoder's and decoder's hidden layer.
        latent: size of the latent code.
    """

    def __init__(self, in_features: int = 64, hidden: int = 128, latent: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, in_features))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # (N, 2L) -> two (N, L)
        # Training samples the code (the reparameterisation trick); evaluation uses its mean.
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return {"recon": self.decoder(z).view_as(x), "mu": mu, "logvar": logvar}


def vae_terms(output: dict[str, torch.Tensor], inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction error, KL divergence to N(0, I)), each summed over a sample's values and
    averaged over the batch."""
    recon = F.mse_loss(output["recon"], inputs, reduction="none").flatten(1).sum(dim=1).mean()
    return recon, kl_divergence(output, None)


def vae_loss(output: dict[str, torch.Tensor], target: Any, inputs: torch.Tensor) -> torch.Tensor:
    """The negative ELBO: reconstruction error plus KL divergence. It declares ``inputs``, so the
    Trainer passes it the batch's images (``trainer/loss.py``); ``target`` (the digit) is unused."""
    recon, kl = vae_terms(output, inputs)
    return recon + kl


def kl_divergence(output: dict[str, torch.Tensor], target: Any) -> torch.Tensor:
    """A metric of a dict output: the latent code's KL divergence to N(0, I), per sample."""
    mu, logvar = output["mu"], output["logvar"]
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


class VAETrainer(Trainer):
    """The template's Trainer with a KL weight that grows by epoch: ``trainer.args.kl_warmup_epochs``."""

    def __init__(self, *args: Any, kl_warmup_epochs: int = 5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if kl_warmup_epochs < 1:
            raise ValueError(f"kl_warmup_epochs must be at least 1, got {kl_warmup_epochs}")
        self.kl_warmup_epochs = kl_warmup_epochs

    def kl_weight(self) -> float:
        return min(1.0, self.epoch / self.kl_warmup_epochs)

    def training_step(self, inputs: torch.Tensor, target: Any) -> tuple[torch.Tensor, Any]:
        output = self.forward(inputs)
        recon, kl = vae_terms(output, inputs)
        return recon + self.kl_weight() * kl, output
