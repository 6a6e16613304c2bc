"""Hyperparameter sweeps on Optuna: ``python sweep.py -c CONFIG --space SPACE`` (see ``sweep.py``).

``space.py`` reads and checks the search space (every value it can give); ``storage.py`` opens the
storage with bounded waits and retries a database that is briefly away; ``study.py`` opens the
study and keeps its trial slots exact. A worker (``worker.py``) is three parts: the study client
(``client.py``), the slot taker (``slots.py``, with the locks and heartbeat of ``locks.py``) and
the trial runner (``trials.py``), which trains each slot as an ordinary run directory;
``results.py`` writes what the sweep folder says about the study.
"""
