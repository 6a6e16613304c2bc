"""Hyperparameter sweeps on Optuna: ``python sweep.py -c CONFIG --space SPACE`` (see ``sweep.py``).

``space.py`` reads and checks the search space (every value it can give), ``storage.py`` opens the
storage with bounded waits and retries a database that is briefly away, ``study.py`` opens the study
and keeps its trial slots exact, ``worker.py`` takes slots and trains each as an ordinary run directory (``claims.py``: the locks
and heartbeat it holds meanwhile), and
``results.py`` writes what the sweep folder says about the study.
"""
