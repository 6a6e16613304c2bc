"""Files the user or a past run controls, read and written through one place.

- **Errors**: an ``OSError`` (no permission, a read-only file system, a full disk, a file size
  limit, a name too long, a file where a folder should be) or a decoding error becomes one
  :class:`~utils.errors.UserError` line naming the file and the fix (:func:`file_error`).
- **Reading**: :func:`read_text` reads a regular file of bounded size (a link to ``/dev/zero``, a
  FIFO or a 2 GB file is refused before it is read); :func:`read_json` also checks the kind of
  value at the top.
- **Writing**: :func:`replacing` gives a temporary sibling to write and renames it into place
  when the block ends well (fsynced first), so a reader sees the old file or the new one, never
  half; the temporary is removed on any exit the process survives. :class:`OutputLock` makes a
  file the user named (``--out``) this process's alone: a second process gets one line instead
  of silently replacing the first one's output, an existing file needs ``force``, and what a
  killed writer left behind is swept by the next lock of the same target.
- **A run's own files**: :func:`open_own` opens a file of a run directory without following a
  symbolic link (``O_NOFOLLOW``), and :func:`refuse_link` says no to a folder of one that is a
  link: a link planted as ``train.log`` or ``checkpoints/`` would make a run write outside its
  directory. The run directory itself and the folders above it may be links (``saved/`` on
  another disk); the entries inside it may not (``app/run_dir.py`` checks them before a resume).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from utils.errors import UserError

MAX_TEXT_BYTES = 16 << 20
"""A config or a run's JSON file is small; anything larger is not one."""
_TEMP = re.compile(r"^\.(.+)\.tmp-(\d+)-[0-9a-f]+$")


def describe_os_error(path: Path, exc: OSError, writing: bool = True) -> str:
    """What went wrong, in words (no errno numbers)."""
    code = exc.errno
    if code == errno.ENAMETOOLONG:
        return "the name is too long for the file system"
    if code in (errno.ENOTDIR, errno.EEXIST) and not path.is_dir():
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        return f"{blocker} is a file, not a folder"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to {'write' if writing else 'read'} there"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if code == errno.EFBIG:
        return "a file size limit was reached (ulimit -f)"
    if code == errno.ENOENT:
        return "no such file or folder"
    if code == errno.EISDIR:
        return "it is a folder"
    return exc.strerror or str(exc)


def file_error(key: str, path: Path, exc: OSError, fix: str, writing: bool = True) -> UserError:
    """An ``OSError`` on ``path`` as one line naming the flag or config key and the fix."""
    verb = "write" if writing else "read"
    return UserError(f"{key}: cannot {verb} {path} ({describe_os_error(Path(path), exc, writing)}); {fix}")


# -- reading ---------------------------------------------------------------------------------------


def read_text(path: Path, what: str, fix: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``what`` (a regular file of at most ``max_bytes``; a byte order mark is
    dropped); every problem is one line starting with the path and ending with ``fix``."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UserError(f"{path}: {what} not found; {fix}") from None
        raise UserError(f"{path}: cannot read {what} ({describe_os_error(path, exc, writing=False)}); {fix}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: a folder, not a {what}; {fix}")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file (a device, a pipe or a socket), not a {what}; {fix}")
    if info.st_size > max_bytes:
        raise UserError(f"{path}: {info.st_size:,} bytes, more than a {what} can be ({max_bytes:,}); {fix}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({describe_os_error(path, exc, writing=False)}); {fix}") from None
    if len(data) > max_bytes:
        raise UserError(f"{path}: more than {max_bytes:,} bytes, more than a {what} can be; {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (it is not UTF-8: byte {exc.start}); {fix}") from None


def read_json(path: Path, what: str, fix: str, kind: type = dict) -> Any:
    """A JSON file whose top level is a ``kind`` (a mapping unless said otherwise)."""
    text = read_text(path, what, fix)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply; {fix}") from None
    if not isinstance(value, kind):
        want = {dict: "a mapping", list: "a list"}.get(kind, kind.__name__)
        raise UserError(f"{path}: holds {type(value).__name__ if value is not None else 'null'}, not {want}; {fix}")
    return value


# -- a run's own files ---------------------------------------------------------------------------


def link_refused(path: Path) -> UserError:
    """The one line for a link where a run directory has a file or folder of its own."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return UserError(
        f"run directory: {path} is a symbolic link{target}; a run writes its own files only inside its run directory: "
        f"put the file or folder itself in its place (or remove the link), then run again"
    )


def refuse_link(path: Path) -> None:
    """Raise :func:`link_refused` when ``path`` (a run directory's own entry) is a symbolic link."""
    if os.path.islink(path):
        raise link_refused(Path(path))


def open_own(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a run directory's own file that never follows a link at ``path`` (one line instead)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise link_refused(Path(path)) from None
        raise


# -- writing ---------------------------------------------------------------------------------------


def temporary_name(path: Path) -> Path:
    """A hidden, unique sibling of ``path`` that names its writer's process id."""
    return path.with_name(f".{path.name[:180]}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, exclusive: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (see the module docstring). ``exclusive``: never
    replace an existing ``path`` (``FileExistsError``); the new file appears by a hard link."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes, key: str, fix: str) -> None:
    """``data`` as the whole content of ``path`` (see :func:`replacing`); trouble is one line."""
    try:
        with replacing(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise file_error(key, path, exc, fix) from None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, target: str | None = None) -> list[Path]:
    """Delete temporaries (:func:`temporary_name`) that a killed writer left in ``folder`` (of
    ``target`` only, when given); never one of a live process."""
    stale = []
    with contextlib.suppress(OSError):
        for path in Path(folder).glob(".*.tmp-*"):
            match = _TEMP.match(path.name)
            leftover = path.is_symlink() or path.is_file()  # a link point() had not renamed into place yet, too
            if match and (target is None or match.group(1) == target[:180]) and leftover and not process_alive(int(match.group(2))):
                with contextlib.suppress(OSError):
                    path.unlink()
                stale.append(path)
    return stale


def same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is the file ``path`` names now (a lock file removed and made again is not)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


class FileLock:
    """An exclusive ``fcntl.flock`` on a lock file: the one lock helper of the project (a run
    directory's ``.lock``, an output's lock, the trackers' parent, a sweep's slots).

    The lock goes away with the process however it ends. The holder writes its process id into the
    file, so that another process can say who holds it (:func:`lock_holder`). ``wait``: block until
    the lock is free, else :meth:`acquire` answers at once. ``fresh``: the file is removed on
    release, and a process that got the lock on a file removed meanwhile takes the new one. The
    file is opened without following a link (:func:`open_own`).
    """

    def __init__(self, path: Path, wait: bool = False, fresh: bool = False):
        self.path, self.wait, self.fresh = Path(path), wait, fresh
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock: None when taken, else the process id that holds it (``"?"`` when unknown).
        ``OSError`` when the file cannot be opened (a missing or read-only folder), a
        :class:`UserError` when it is a link."""
        while True:
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                return holder
            if not self.fresh or same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed that file between our open and flock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            if self.fresh:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def lock_holder(path: Path) -> str | None:
    """The process id written in a held lock file (:class:`FileLock`), or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


class OutputLock:
    """A file the user named, this process's alone until :meth:`release` (see the module docstring).

    The lock is an exclusive ``flock`` on a hidden ``.NAME.claim`` beside the target (the file keeps
    the name it had before this class was renamed): it goes away with the process however it
    ends, so a leftover lock file is stale by definition and the next locker takes it over,
    sweeping the temporaries a killed writer left.
    """

    def __init__(self, path: Path, flag: str, force: bool = False):
        self.path, self.flag, self.force = Path(path), flag, force
        self.lock_path = self.path.with_name(f".{self.path.name[:200]}.claim")
        self._lock = FileLock(self.lock_path, fresh=True)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self._acquire()
        except OSError as exc:  # a name too long, a folder without permission
            self.release()
            raise file_error(self.flag, self.path, exc, f"pass {self.flag} with a writable place") from None

    def _acquire(self) -> None:
        path, flag = self.path, self.flag
        if path.is_dir():
            raise UserError(f"{flag}: {path} is a folder; name a file in it")
        if not path.parent.is_dir():
            raise UserError(f"{flag}: the folder {path.parent} does not exist; create it first")
        try:
            holder = self._lock.acquire()
        except OSError as exc:
            raise file_error(flag, path, exc, f"pass {flag} with a writable place") from None
        if holder is not None:
            raise UserError(f"{flag}: {path} is being written by process {holder}; wait for it, or choose another name")
        remove_stale_temporaries(path.parent, path.name)
        if path.exists() and not self.force:
            self.release()
            raise UserError(f"{flag}: {path} exists; pass --force to replace it, or choose another name")

    def publish(self, tmp: Path) -> None:
        """Make the finished temporary ``tmp`` the target: a rename (``force``), else a link that
        fails if the target appeared meanwhile."""
        try:
            if self.force:
                os.replace(tmp, self.path)
            else:
                os.link(tmp, self.path)
                tmp.unlink()
        except FileExistsError:
            raise UserError(f"{self.flag}: {self.path} appeared while this process wrote it; pass --force to replace it") from None
        except OSError as exc:
            raise file_error(self.flag, self.path, exc, f"pass {self.flag} with a writable place") from None
        fsync_dir(self.path.parent)

    def release(self) -> None:
        self._lock.release()
