"""Remote (fsspec) inputs and outputs: the run's storage options, object-store claims, redaction.

A call that takes ``storage_options=`` sets them for its duration with
:func:`storage_options_used`; the readers and writers below it (input engines, the result store,
checkpoints) ask :func:`input_options` / :func:`output_options` for the URL they open, so the
options never travel through the parameter tables that end up in attrs or checkpoints.

Object stores have no rename and no ``mkdir``: the one-writer claim of a remote output is an
object ``.NAME.lock`` beside it, created with a conditional put (``If-None-Match: *`` on S3,
through s3fs's ``mode="create"``) where the filesystem supports it, and with a check then a
put (a race window of one round trip) where it does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from dnmf.errors import OutputError
from dnmf.io.lock import busy_message, claim, held_once, is_stale, owner_record

#: (input options, output options or None for "the same").
_OPTIONS: ContextVar[tuple[dict[str, Any], dict[str, Any] | None]] = ContextVar(
    "dnmf_storage_options", default=({}, None))
#: Option names whose values are credentials (never shown, never stored).
_SECRET_NAME = re.compile(r"key|secret|token|password|passwd|credential|session|auth|sas",
                          re.IGNORECASE)
#: Environment variables whose values are credentials.
_SECRET_ENV = re.compile(r"^(AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)|"
                         r"GOOGLE_APPLICATION_CREDENTIALS|AZURE_STORAGE_(KEY|SAS_TOKEN|"
                         r"CONNECTION_STRING)|.*_(SECRET|TOKEN|PASSWORD))$")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")


def is_remote(location: str | os.PathLike | None) -> bool:
    """Whether ``location`` is a URL that is not on the local filesystem."""
    if location is None or not isinstance(location, str | os.PathLike):
        return False
    text = os.fspath(location)
    return "://" in text and not text.startswith(("file://", "local://"))


@contextlib.contextmanager
def storage_options_used(storage_options: Mapping[str, Any] | None = None,
                         out_storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Use these fsspec options for the remote inputs (``storage_options``) and outputs
    (``out_storage_options``, default the same) opened in this block. ``None`` for both keeps
    the options of an enclosing block."""
    if storage_options is None and out_storage_options is None:
        yield
        return
    token = _OPTIONS.set((dict(storage_options or {}),
                          None if out_storage_options is None else dict(out_storage_options)))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def input_options() -> dict[str, Any]:
    """The fsspec options of remote inputs in the current block."""
    return dict(_OPTIONS.get()[0])


def output_options() -> dict[str, Any]:
    """The fsspec options of remote outputs in the current block."""
    inputs, outputs = _OPTIONS.get()
    return dict(inputs if outputs is None else outputs)


def zarr_store(location: str | os.PathLike, *, read_only: bool = False) -> Any:
    """What zarr opens for an output: the path for a local one, an ``FsspecStore`` with the
    output options for a URL."""
    text = os.fspath(location)
    if not is_remote(text):
        return text
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(text, storage_options=output_options(), read_only=read_only)


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of an output URL with the output options."""
    import fsspec

    return fsspec.core.url_to_fs(url, **output_options())


def exists(url: str) -> bool:
    """Whether anything is stored at (or under) the output URL."""
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except OSError as exc:
        raise OutputError(f"cannot check output {redact(url)}: {redact(str(exc))} — check the "
                          "URL, the endpoint and the credentials") from None


def lock_url(url: str) -> str:
    """The claim object of the remote output ``url``."""
    head, _, name = url.rstrip("/").rpartition("/")
    return f"{head}/.{name}.lock"


def claim_remote(url: str) -> contextlib.AbstractContextManager[None]:
    """Hold the remote output ``url`` for this run: create its claim object (conditionally
    where the store can) and remove it at the end; refuse when another live run holds it.

    Raises
    ------
    OutputError
    """
    lock = lock_url(url)

    def acquire() -> Callable[[], None]:
        fs, path = filesystem(lock)
        _acquire(fs, path, url, lock)

        def release() -> None:
            with contextlib.suppress(OSError):
                fs.rm(path)

        return release

    return held_once(lock, acquire)


def claim_output(out: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Hold the output ``out`` for this run, local (a claim directory, :func:`dnmf.io.lock.
    claim`) or remote (a lock object beside it, :func:`claim_remote`)."""
    if is_remote(out):
        return claim_remote(os.fspath(out))
    text = os.fspath(out)
    for prefix in ("file://", "local://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return claim(Path(text))


def _acquire(fs: Any, path: str, url: str, lock: str) -> None:
    body = json.dumps(owner_record()).encode()
    for _ in range(2):  # a stale claim is removed once, then taken
        try:
            create_exclusive(fs, path, body)
            return
        except FileExistsError:
            try:
                held = json.loads(fs.cat_file(path))
            except (OSError, ValueError):
                held = None
            if held is not None and not is_stale(held, None):
                raise OutputError(busy_message(redact(url), held, f"delete {redact(lock)}")
                                  ) from None
            with contextlib.suppress(OSError):
                fs.rm(path)
        except OSError as exc:
            raise OutputError(f"cannot claim output {redact(url)}: {redact(str(exc))} — check "
                              "the URL, the endpoint and the credentials") from None
    raise OutputError(f"cannot claim output {redact(url)}: {redact(lock)} keeps reappearing "
                      "— delete it")


def create_exclusive(fs: Any, path: str, body: bytes) -> None:
    """Write ``body`` at ``path`` only if nothing is there; FileExistsError otherwise.

    Atomic where the filesystem has a conditional create (s3fs: ``If-None-Match: *``, which
    AWS S3 and most S3-compatible servers honour); a check then a put elsewhere.
    """
    try:
        fs.pipe_file(path, body, mode="create")  # S3: a conditional put (If-None-Match: *)
        return
    except FileExistsError:
        raise
    except TypeError:
        pass  # this filesystem has no conditional create: check, then put
    except OSError as exc:
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            raise FileExistsError(path) from None
        raise
    if fs.exists(path):
        raise FileExistsError(path)
    fs.pipe_file(path, body)


def secrets() -> list[str]:
    """The credential values this process knows of: in the current storage options and in
    the environment."""
    found: list[str] = []

    def walk(options: Any, secret: bool = False) -> None:
        if isinstance(options, Mapping):
            for name, value in options.items():
                walk(value, secret or bool(_SECRET_NAME.search(str(name))))
        elif isinstance(options, list | tuple):
            for value in options:
                walk(value, secret)
        elif secret and isinstance(options, str) and len(options) >= 4:
            found.append(options)

    inputs, outputs = _OPTIONS.get()
    walk(inputs)
    walk(outputs or {})
    found += [v for k, v in os.environ.items() if _SECRET_ENV.match(k) and len(v) >= 4]
    return sorted(set(found), key=len, reverse=True)


def redact(text: Any, extra: list[str] | None = None) -> str:
    """``text`` with URL credentials (``scheme://user:pass@``) and every known secret value
    replaced by ``***``."""
    out = _URL_CREDENTIALS.sub(r"\g<scheme>***@", str(text))
    for secret in [*(extra or []), *secrets()]:
        out = out.replace(secret, "***")
    return out


def redacted(value: Any, extra: list[str] | None = None) -> Any:
    """:func:`redact` applied to every string in a JSON-like value."""
    if isinstance(value, str):
        return redact(value, extra)
    if isinstance(value, Mapping):
        return {k: redacted(v, extra) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v, extra) for v in value]
    return value


def uses_storage_options(func: Any) -> Any:
    """Run ``func`` with its ``storage_options`` / ``out_storage_options`` keyword arguments
    in force (:func:`storage_options_used`) for everything it opens."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with storage_options_used(kwargs.get("storage_options"),
                                  kwargs.get("out_storage_options")):
            return func(*args, **kwargs)

    return wrapper


def set_storage_options(storage_options: Mapping[str, Any] | None) -> None:
    """Use these options for the rest of this context (the CLI: one command per process)."""
    _OPTIONS.set((dict(storage_options or {}), None))
