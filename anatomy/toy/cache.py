"""Where retrained toys live: verified directories, swapped in whole, one trainer at a time.

The shipped toy is loaded from the package (``weights.SHIPPED``) and never
written. A toy retrained by the user (``python -m anatomy toy train --seed N``)
goes to ``$ANATOMY_CACHE/toy-<key>/`` (default ``~/.cache/anatomy/``), where
``<key>`` hashes the toy config, the training recipe and ``CODE_VERSION``.
A relative ``ANATOMY_CACHE`` is resolved once, against the current directory
of the first process that reads it, and written back into the environment as
an absolute path, so the kernels and subprocesses it starts use the same place.

A directory holds ``model.safetensors``, ``curve.json`` and ``manifest.json``
(the sha256 of every other file). The rules that keep it whole:

- a model is written in a ``.toy-<key>.partial-*`` sibling, the manifest last,
  then swapped in by renames, so a reader sees the old model or the new one;
  an interrupted retrain leaves the previous model in place;
- a trainer holds ``.toy-<key>.lock`` (``flock``): a second trainer waits, then
  loads what the first wrote; partial directories of killed savers are swept;
- a damaged directory (unreadable manifest, wrong hash) is reported and set aside
  as ``toy-<key>.damaged-<time>``, never deleted: the next training restores it;
- the destination is checked (a directory, writable, with room) before training.

>>> directory = cache_dir(recipe=Recipe())      # doctest: +SKIP
PosixPath('/home/me/.cache/anatomy/toy-3f2a...')
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anatomy.model import TOY, config_path
from anatomy.toy.training import Recipe

CACHE_ENV = "ANATOMY_CACHE"
CODE_VERSION = 5  # bump whenever the task, the encoding or the training loop would change the weights
MANIFEST = "manifest.json"
ROOM = 64 << 20  # bytes a retrained toy needs free (it writes ~3 MB)


class CacheError(RuntimeError):
    """A toy directory that cannot be used: damaged, missing, or not writable."""


def cache_root() -> Path:
    """``$ANATOMY_CACHE`` if set (a relative path resolved once, see the module), else ``~/.cache/anatomy``."""
    value = os.environ.get(CACHE_ENV)
    if not value:
        return Path.home() / ".cache" / "anatomy"
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
        os.environ[CACHE_ENV] = str(path)
    return path


def cache_key(recipe: Recipe) -> str:
    """16 hex digits of sha256 over the toy config, ``recipe`` and ``CODE_VERSION``."""
    config = json.loads(config_path(TOY).read_text())
    spec = {"config": config, "recipe": recipe.to_dict(), "code": CODE_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(recipe: Recipe) -> Path:
    """The directory that holds (or will hold) the model retrained with ``recipe``."""
    return cache_root() / f"toy-{cache_key(recipe)}"


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict:
    """``directory``'s manifest, a dict with a ``files`` dict of name -> sha256; ``CacheError`` if unreadable."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{directory} has no {MANIFEST}: not a finished toy directory")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"{path} is not readable JSON ({error})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not (isinstance(files, dict) and files and all(isinstance(v, str) for v in files.values())):
        raise CacheError(f"{path} lists no files with their sha256 (expected an object with 'files')")
    return manifest


def verify(directory: Path) -> dict:
    """The manifest of ``directory`` once every file matches it; ``CacheError`` naming the first mismatch."""
    manifest = read_manifest(directory)
    for name, expected in manifest["files"].items():
        path = Path(directory) / name
        if Path(name).name != name or not path.is_file():
            raise CacheError(f"{path} is listed in {MANIFEST} but missing")
        if sha256(path) != expected:
            raise CacheError(f"{path} does not match its sha256 in {MANIFEST}: the file is corrupted")
    return manifest


def writable(root: Path, room: int = ROOM) -> Path:
    """``root``, created if needed, once it is a writable directory with ``room`` bytes free; else ``CacheError``.

    Called before training, so that a bad destination fails in a second, not after minutes.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CacheError(f"the toy cache {root} ({CACHE_ENV}) is a file; expected a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root) as probe:
            probe.write(b"anatomy")
    except OSError as error:
        raise CacheError(f"the toy cache {root} ({CACHE_ENV}) is not writable: {error.strerror or error}") from None
    free = free_bytes(root)
    if free < room:
        raise CacheError(f"the toy cache {root} ({CACHE_ENV}) has {free >> 20} MiB free; training needs {room >> 20}")
    return root


def free_bytes(root: Path) -> int:
    """Bytes free on ``root``'s file system."""
    return shutil.disk_usage(root).free


@contextmanager
def locked(directory: Path, waiting: str = "") -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``directory`` (an exclusive ``flock``, released when the process dies);
    prints ``waiting`` (if given) on stderr when another process holds it."""
    path = Path(directory).parent / f".{Path(directory).name}.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep(directory: Path) -> None:
    """Remove what killed savers left beside ``directory`` (partial and old copies); hold ``locked`` first.

    A previous model moved aside by a swap that was killed half-way is put back.
    """
    directory = Path(directory)
    for leftover in sorted(directory.parent.glob(f".{directory.name}.*-*")):
        if leftover.name.startswith(f".{directory.name}.previous-") and not directory.exists():
            os.rename(leftover, directory)
        elif leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def swap_in(scratch: Path, directory: Path) -> None:
    """Put the finished ``scratch`` directory in place of ``directory`` (old copy removed after the rename)."""
    previous = directory.parent / f".{directory.name}.previous-{os.getpid()}"
    if directory.exists():
        os.rename(directory, previous)
    os.rename(scratch, directory)
    shutil.rmtree(previous, ignore_errors=True)


def scratch_beside(directory: Path) -> Path:
    """A new, empty ``.<name>.partial-*`` directory beside ``directory`` (readable by all, like the result)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    scratch.chmod(0o755)
    return scratch


def set_aside(directory: Path) -> Path:
    """Rename a damaged ``directory`` to ``<name>.damaged-<UTC time>[-N]`` (kept for inspection); returns the new path.

    ``-N`` (2, 3, ...) keeps apart two entries set aside within the same second.
    """
    stamp = f"{directory.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    for n in range(1, 1000):
        aside = directory.parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            aside.mkdir()  # claims the name; a rename onto an empty directory replaces it
        except FileExistsError:
            continue
        os.rename(directory, aside)
        return aside
    raise FileExistsError(f"{directory.parent} already holds 999 entries named {stamp}*")
