"""A sweep's storage: Optuna's RDB storage, bounded in time both ways.

**Never waiting forever.** A PostgreSQL or MySQL server that accepts a connection and never
answers would hold a worker (and its setup lock) for ever: every connection is opened with a
``connect_timeout`` of :data:`CONNECT_TIMEOUT` seconds and, on PostgreSQL, every statement with a
``statement_timeout`` of :data:`STATEMENT_TIMEOUT` seconds (and ``tcp_user_timeout`` for a server
that stops answering mid-connection). A value the URL gives itself
(``...?connect_timeout=5``, ``...?options=-c statement_timeout=...``) wins. A storage that cannot
be opened is one line naming the URL (its password masked) and the fix.

**A database that comes back.** Once open, every storage call that loses its connection
(SQLAlchemy's ``OperationalError`` / ``InterfaceError``, also inside Optuna's ``StorageInternalError``: a restarted server, a network blip) is
tried again, each second, for up to :data:`RETRY_SECONDS` seconds in all (one warning when it
starts, one when it recovered); a database that stays away longer ends the worker in one line,
with its trials where a re-run of the same command resumes them (``app/sweeps/worker.py``).
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from typing import Any

from logger.logger import get_logger
from utils.errors import UserError, first_line

CONNECT_TIMEOUT = 30
"""Seconds to wait for a database server to accept and answer a new connection."""
STATEMENT_TIMEOUT = 300
"""Seconds a PostgreSQL server may take over one statement (Optuna's are short; a lock held by a dead client is not)."""
RETRY_SECONDS = 60.0
"""How long, in all, one storage call is tried again while its database is unreachable."""


def masked(url: str) -> str:
    """A storage URL fit to print and to store: its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def default_storage(folder) -> str:
    return f"sqlite:///{folder / 'study.db'}"


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy ``create_engine`` arguments for ``url``: the timeouts above, unless the URL sets them."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # SQLite's busy wait for another worker's write
    query = _query_keys(url)
    connect: dict[str, Any] = {}
    if url.startswith("postgres"):
        if "connect_timeout" not in query:
            connect["connect_timeout"] = CONNECT_TIMEOUT
        if "options" not in query:
            connect["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT * 1000}"
        if "tcp_user_timeout" not in query:
            connect["tcp_user_timeout"] = CONNECT_TIMEOUT * 1000
    elif url.startswith("mysql"):
        for key in ("connect_timeout", "read_timeout", "write_timeout"):
            if key not in query:
                connect[key] = CONNECT_TIMEOUT if key == "connect_timeout" else STATEMENT_TIMEOUT
    return {"pool_pre_ping": True, **({"connect_args": connect} if connect else {})}


def _query_keys(url: str) -> dict[str, str]:
    query = url.split("?", 1)[1] if "?" in url else ""
    return dict((part.split("=", 1) + [""])[:2] for part in query.split("&") if part)


def open_storage(url: str, heartbeat: int, on_stale=None):
    """Optuna's RDB storage for ``url`` (SQLite, PostgreSQL, MySQL, ...), with heartbeats when ``heartbeat`` > 0,
    its calls retried while the database is briefly away (see the module docstring)."""
    import optuna
    import sqlalchemy.exc

    beat = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat, "heartbeat_stale_trial_callback": on_stale} if heartbeat else {}
    try:
        storage = _first_to_make_the_tables(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **beat))
    except ImportError as exc:  # Optuna wraps SQLAlchemy's ModuleNotFoundError for a missing driver
        missing = next((e.name for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, ImportError) and e.name), None) or "(see SQLAlchemy's dialects)"
        hint = "pip install -e .[postgres]" if "psycopg" in missing or url.startswith("postgres") else f"install the driver {missing}"
        raise UserError(f"--storage: {masked(url)} needs a database driver that is not installed ({missing}): {hint}") from None
    except sqlalchemy.exc.OperationalError as exc:
        waited = _query_keys(url).get("connect_timeout", CONNECT_TIMEOUT)
        raise UserError(
            f"--storage: cannot open {masked(url)}: {first_line(exc)}; check that the server is up and answers "
            f"(a connection waits at most {waited} s; ?connect_timeout=N in the URL changes it)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as exc:
        raise UserError(f"--storage: cannot open {masked(url)}: {first_line(exc)}") from None
    _retry_while_away(storage, masked(url), sqlite=url.startswith("sqlite"))
    return storage


SCHEMA_RACE = re.compile(r"already exists|duplicate key|unique constraint|database is locked", re.IGNORECASE)
"""What a database says to a worker that creates Optuna's tables while another worker does."""


def _first_to_make_the_tables(make):
    """``make()``, again after a moment when another worker was creating the storage's tables at
    the same time (workers started together on a new study): the second one finds them made."""
    import sqlalchemy.exc

    for attempt in range(10):
        try:
            return make()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if attempt == 9 or not SCHEMA_RACE.search(str(exc)):
                raise
            time.sleep(0.2 * (attempt + 1))


_NOT_RETRIED = {"remove_session", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "get_failed_trial_callback"}
_NOT_RETRIED |= {"create_new_trial", "_create_new_trial"}
"""Creating a trial is not retried: one whose commit reached the database before the connection
broke would be created twice (a slot trained twice). A lost connection there ends the worker in
one line (:func:`lost_connection_said`), and a re-run makes the slots that are missing."""
_inside = threading.local()


def _retry_while_away(storage, shown: str, sqlite: bool) -> None:
    """Wrap each of ``storage``'s own calls (public and the private ones Optuna's cache calls) in
    :func:`_retrying`; a call made by another (nested) is retried by the outer one only. A SQLite
    file has no server to come back: only its "database is locked" is waited for."""
    import optuna

    state = {"away": False, "sqlite": sqlite}  # once it stayed away, later calls (putting a trial back, the table) try once
    names = {name for cls in type(storage).__mro__ if cls.__module__.startswith("optuna.storages") for name in vars(cls)}
    for name in sorted(names):
        method = getattr(storage, name, None)
        if name.startswith("__") or name in _NOT_RETRIED or not callable(method) or isinstance(method, type):
            continue
        if not name.startswith("_") or name.startswith(("_get_", "_create_new_trial", "_set_trial")):
            setattr(storage, name, _retrying(method, shown, state, storage))
    assert isinstance(storage, optuna.storages.RDBStorage)


class StorageAway(UserError):
    """The sweep's database stayed unreachable for longer than :data:`RETRY_SECONDS`."""


def lost_connection(exc: BaseException) -> BaseException | None:
    """The connection error behind ``exc`` (Optuna wraps one raised at a commit in its
    ``StorageInternalError``), or None when ``exc`` is something else."""
    import sqlalchemy.exc

    for error in (exc, exc.__cause__):
        # PendingRollbackError: a session whose connection broke mid-transaction refuses every later
        # call until it is rolled back; the retry discards that session (:func:`_retrying`).
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.PendingRollbackError)):
            return error
    return None


@contextlib.contextmanager
def lost_connection_said(shown: str):
    """A lost connection that was not retried (or not retried long enough) as one line naming the storage."""
    try:
        yield
    except StorageAway:
        raise
    except Exception as exc:
        lost = lost_connection(exc)
        if lost is None:
            raise
        raise UserError(f"--storage: {shown}: {first_line(lost)}; when it answers, run the same command again to continue") from None


def _retrying(method, shown: str, state: dict, storage: Any = None):

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "depth", 0):
            return method(*args, **kwargs)
        _inside.depth = 1
        try:
            deadline, warned = time.monotonic() + RETRY_SECONDS, False
            while True:
                try:
                    result = method(*args, **kwargs)
                    state["away"] = False
                    if warned:
                        get_logger().warning("sweep: the storage %s answers again", shown)
                    return result
                except Exception as error:
                    exc = lost_connection(error)
                    if exc is None or state["sqlite"] and "locked" not in str(exc):
                        raise
                    if state["away"] or time.monotonic() >= deadline:
                        state["away"] = True
                        raise StorageAway(
                            f"--storage: {shown} did not answer for {RETRY_SECONDS:g} s ({first_line(exc)}); "
                            f"when it is back, run the same command again: the trials resume where they stopped"
                        ) from None
                    if not warned:
                        get_logger().warning("sweep: the storage %s is unreachable (%s); trying again for up to %g s", shown, first_line(exc), RETRY_SECONDS)
                        warned = True
                    if storage is not None:
                        storage.scoped_session.remove()  # a broken transaction is not retried: the next try gets a new session
                    time.sleep(1.0)
        finally:
            _inside.depth = 0

    return call
