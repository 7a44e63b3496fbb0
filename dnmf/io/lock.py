"""One writer per output: a run claims OUT before it reads X, and holds it until it ends.

The claim is a hidden sibling directory ``.NAME.lock`` made with ``mkdir`` (atomic on every
local and network file system: a second run cannot also make it), holding ``owner.json`` with
the claimant's pid, host and start time. A claim left by a run that was killed (its pid gone on
this host) is stale and taken over; a live one is refused with the owner named. Remote outputs
(object stores) are claimed with a lock object instead (``dnmf.io.remote.claim_output``
picks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

from dnmf.errors import OutputError

OWNER_FILE = "owner.json"
#: Claims this process holds, local and remote (re-entrant: a fit that holds OUT writes it
#: through helpers that claim it again).
_HELD: dict[Hashable, int] = {}


def lock_path(out: Path) -> Path:
    """The claim directory of the local output ``out``."""
    path = Path(os.path.abspath(out))
    return path.parent / f".{path.name}.lock"


def owner_of(lock: Path) -> dict[str, Any] | None:
    """The claimant recorded in ``lock`` (None while it is being written, or unreadable)."""
    try:
        return json.loads((lock / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_stale(owner: dict[str, Any] | None, lock: Path) -> bool:
    """A claim whose process is gone from this host (or one never completed, after a minute)."""
    if owner is None:
        try:
            return time.time() - lock.stat().st_mtime > 60
        except OSError:
            return True
    if owner.get("host") != socket.gethostname():
        return False  # another host's pid cannot be checked from here
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError):
        return False
    return False


def owner_record() -> dict[str, Any]:
    """What a claim records of its run: pid, host and start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def busy_message(out: Any, owner: dict[str, Any] | None, remedy: str) -> str:
    """The refusal of an output another live run holds, naming that run."""
    who = ("pid {pid}, host {host}, since {since}".format(**owner)
           if owner and {"pid", "host", "since"} <= owner.keys() else "starting")
    return (f"{out} is being written by another run ({who}) — wait for it to end, or write "
            f"elsewhere; if that run is gone, {remedy}")


@contextlib.contextmanager
def held_once(key: Hashable, acquire: Callable[[], Callable[[], None]]) -> Iterator[None]:
    """Hold the claim ``key`` for the block: the outermost holder in this process calls
    ``acquire`` (which returns the release), nested holders share its claim."""
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    release = acquire()
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        release()


def claim(out: Path | None) -> contextlib.AbstractContextManager[None]:
    """Hold the local output ``out`` for this run (nothing for None: a remote output); refuse
    it when another live run holds it. Folders made for the claim are removed with it.

    Raises
    ------
    OutputError
    """
    if out is None:
        return contextlib.nullcontext()
    lock = lock_path(out)
    return held_once(lock, lambda: _acquire_local(lock, out))


def _acquire_local(lock: Path, out: Path) -> Callable[[], None]:
    """Make ``lock`` (and the folders above it that are missing); return its release."""
    made = _missing_parents(lock)
    for folder in reversed(made):
        folder.mkdir(exist_ok=True)
    try:
        _acquire(lock, out)
    except BaseException:
        _remove_empty(made)
        raise

    def release() -> None:
        shutil.rmtree(lock, ignore_errors=True)
        _remove_empty(made)

    return release


def _missing_parents(lock: Path) -> list[Path]:
    """The folders above ``lock`` that do not exist yet, deepest first."""
    missing, folder = [], lock.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a claim made, deepest first, where nothing was put in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(lock: Path, out: Path) -> None:
    for _ in range(2):  # a stale claim is removed once, then taken
        try:
            lock.mkdir()
        except FileExistsError:
            owner = owner_of(lock)
            if not is_stale(owner, lock):
                raise OutputError(busy_message(out, owner, f"remove {lock}")) from None
            shutil.rmtree(lock, ignore_errors=True)  # its run was killed: take over
            continue
        except OSError as exc:
            raise OutputError(f"cannot claim output {out}: {exc.strerror} ({lock}) — choose "
                              "a writable location") from None
        (lock / OWNER_FILE).write_text(json.dumps(owner_record()))
        return
    raise OutputError(f"cannot claim output {out}: {lock} keeps reappearing — remove it")
