r"""condgen's one file format, for priors and posterior estimators alike.

A file is written by :func:`torch.save` and holds only plain data and tensors:

.. code-block:: python

    {
        "format": "condgen-prior",  # or "condgen-npe", ...: what the file holds
        "version": 1,  # of that format
        "config": {...},  # str, int, float, bool, None, lists and str-keyed dicts
        "state_dict": {...},  # names to tensors
        ...,  # further plain entries of the writer's, e.g. "class"
    }

:func:`write` replaces the file atomically (a temporary file beside it, synced, then
renamed), after removing the temporary files that writes of the same path by processes that no
longer run left behind (:func:`remove_stale_temporaries`). :func:`read` checks the archive's
CRC-32 checksums, loads it with ``torch.load(weights_only=True)`` (which refuses pickled code)
and checks the format, the version and the two entries, with errors that say what the file is
instead.
"""

from __future__ import annotations

__all__ = ["check_plain", "read", "remove_stale_temporaries", "write"]

import contextlib
import os
import pickle
import re
import socket
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import torch
from torch import Tensor

PathLike = str | os.PathLike
_PID_AND_RANDOM = re.compile(r"(\d+)\.[a-z0-9_]+\.tmp")


def check_plain(value: Any, where: str) -> None:
    r"""Raises a TypeError unless ``value`` is plain data that ``weights_only`` loading
    accepts: None, bool, int, float, str, and lists, tuples and str-keyed dicts of them."""
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"cannot save {where}: its key {key!r} is not a string")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"cannot save {where} = {value!r} of type {type(value).__name__}: a saved "
        f"configuration holds only plain values (numbers, strings, lists, dicts)"
    )


def _file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _temporary_prefix(path: str) -> str:
    r"""``.NAME.HOST.``: the temporary files that :func:`write` writes beside ``path`` are
    ``.NAME.HOST.PID.XXXXXXXX.tmp``, so that a later write can tell whose they are."""
    return f".{os.path.basename(path)}.{socket.gethostname()}."


def _alive(pid: int) -> bool:
    r"""Whether a process ``pid`` runs on this host (on Windows, where there is no signal 0 to
    ask with, every process counts as alive)."""
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[str]:
    r"""Removes the temporary files that writes of ``path`` by processes of this host that no
    longer run left beside it (a process killed with SIGKILL during :func:`write`), and
    returns their paths.

    Temporary files of running processes (a concurrent write) and of other hosts (a shared
    file system) are kept, as are files of other names.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temporary_prefix(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        # mkstemp's random part is made of lowercase letters, digits and underscores
        match = name.startswith(prefix) and _PID_AND_RANDOM.fullmatch(name[len(prefix) :])
        if match and int(match[1]) > 0 and not _alive(int(match[1])):
            with contextlib.suppress(OSError):  # another writer may have removed it first
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


def write(
    path: PathLike,
    format: str,
    version: int,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    **entries: Any,
) -> None:
    r"""Writes a condgen file atomically: ``path`` always holds either the old file or the
    complete new one (its permissions are kept).

    Arguments:
        path: The file.
        format: What the file holds, e.g. ``"condgen-prior"``.
        version: The format's version.
        config: Plain data, which the caller checks with :func:`check_plain` (naming what it
            saves in the error).
        state: Tensors, saved detached on the CPU.
        entries: Further plain entries of the document.
    """
    document = {
        "format": format,
        "version": version,
        **entries,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mode = _file_mode(path)
    remove_stale_temporaries(path)
    prefix = f"{_temporary_prefix(path)}{os.getpid()}."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(document, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _load(file: BinaryIO, path: str, not_ours: str, map_location: Any) -> Any:
    r"""The object in a torch file, after checking that it is a complete zip archive (as
    :func:`torch.save` writes) whose members match their CRC-32 checksums."""
    if not zipfile.is_zipfile(file):
        raise ValueError(f"{not_ours} (not a torch archive), or it is truncated")
    try:
        file.seek(0)
        damaged = zipfile.ZipFile(file).testzip()
    except Exception as error:
        raise ValueError(f"{path} is corrupted ({type(error).__name__}: {error})") from None
    if damaged is not None:
        raise ValueError(f"{path} is corrupted: its member {damaged!r} fails its CRC-32 check")
    file.seek(0)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{not_ours}: it holds pickled objects other than tensors and plain data, which "
            f"condgen refuses to load (they could run code)"
        ) from None
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"{not_ours}, or it is corrupted ({type(error).__name__}: {reason})"
        ) from None


def read(
    path: PathLike,
    format: str,
    version: int,
    what: str,
    hint: str,
    map_location: str | torch.device | None = None,
) -> dict[str, Any]:
    r"""Reads a file that :func:`write` wrote with ``format``, up to ``version``.

    Arguments:
        path: The file.
        format: The format it must have.
        version: The newest version this condgen reads.
        what: What the file should be, for the errors, e.g. ``"condgen prior file"``.
        hint: How to write one, for the errors, e.g. ``"prior.save(path)"``.
        map_location: As in :func:`torch.load`.

    Returns:
        The document, with a dict ``"config"`` and a ``"state_dict"`` of tensors.

    Raises:
        OSError: If the file cannot be opened.
        ValueError: If it is not such a file (another torch file, a text file, a pickle of
            other objects), is truncated or corrupted, or has a newer or invalid version.
    """
    path = os.fspath(path)
    not_ours = f"{path} is not a {what}"
    with open(path, "rb") as file:  # missing files and permissions raise OSError as usual
        document = _load(file, path, not_ours, map_location)
    if not isinstance(document, dict) or document.get("format") != format:
        raise ValueError(
            f"{not_ours}: it has no 'format': {format!r} entry (write one with {hint})"
        )
    found = document.get("version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise ValueError(f"{path} has an invalid format version {found!r}")
    if found > version:
        raise ValueError(
            f"{path} has format version {found}, newer than this condgen reads ({version}): "
            f"upgrade condgen"
        )
    config, state = document.get("config"), document.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} is malformed: 'config' and 'state_dict' must be dicts")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} is malformed: 'state_dict' must map names to tensors")
    return document
