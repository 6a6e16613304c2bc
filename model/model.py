"""Example models. Each is an ``nn.Module`` through :class:`BaseModel`, built by name from ``arch``."""

import torch.nn.functional as F
from torch import nn

from base import BaseModel


class DigitsCNN(BaseModel):
    """A small CNN for 1x8x8 digit images (scikit-learn's ``load_digits``).

    Args:
        num_classes: output classes.
        dropout: dropout probability before each fully connected layer (0 turns it off).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))  # (N, 32, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 4, 4)
        x = self.dropout(x.flatten(1))  # (N, 1024): flatten all but the batch dim
        x = self.dropout(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class LeNet(BaseModel):
    """LeNet-style CNN for 1x28x28 images (MNIST)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # (N, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))  # (N, 20, 4, 4)
        x = self.dropout(F.relu(self.fc1(x.view(-1, 320))))
        return F.log_softmax(self.fc2(x), dim=1)


class MLP(BaseModel):
    """A multilayer perceptron on flat feature vectors (images are flattened)."""

    def __init__(self, in_features: int = 64, hidden: int = 64, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=1)


class Regressor(BaseModel):
    """A multilayer perceptron that predicts one number per sample (a regression): ``(N, F) -> (N,)``."""

    def __init__(self, in_features: int = 10, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)  # (N, 1) -> (N,): the shape of the target
