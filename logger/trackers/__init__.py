"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases (``logger.trackers``).

- ``settings.py``: the config's ``logger`` section resolved for a run; which trackers are installed.
- ``hub.py``: :class:`Trackers`, a run's trackers (what it sends them, ``trackers.json``, the ids in checkpoints).
- ``worker.py``: one background thread per tracker; a tracker never slows or ends a run.
- ``tracker.py``: what an adapter is; exactly-once sending after resumes.
- ``mlflow_tracker.py``, ``wandb_tracker.py``: the adapters, importing their library only when used.
- ``parents.py``: parent runs of cross-validations and sweeps (:func:`open_parent`, :func:`close_parent`).
"""

from logger.trackers.hub import RECORD, Trackers
from logger.trackers.parents import close_parent, open_parent
from logger.trackers.settings import EXTRAS, TRACKERS, TrackerSettings, installed, missing_extras
from logger.trackers.tracker import TrackedRun

__all__ = ["EXTRAS", "RECORD", "TRACKERS", "TrackedRun", "TrackerSettings", "Trackers", "close_parent", "installed", "missing_extras", "open_parent"]
