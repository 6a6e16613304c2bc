from trainer.evaluator import Evaluator
from trainer.trainer import Trainer

__all__ = ["Evaluator", "Trainer"]
