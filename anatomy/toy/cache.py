"""Where the trained toy lives: a verified, atomically written cache directory.

``$ANATOMY_CACHE/toy-<key>/`` (default ``~/.cache/anatomy/toy-<key>/``), where
``<key>`` hashes the toy config, the training recipe and ``CODE_VERSION``. It
holds what ``save_pretrained`` writes plus ``manifest.json``, which records the
sha256 of every other file. A cache is written in a temporary sibling
directory, the manifest last, then renamed into place in one step: a reader
sees a complete cache or none. Loading recomputes every hash first.

>>> directory = cache_dir(recipe=Recipe())      # doctest: +SKIP
PosixPath('/home/me/.cache/anatomy/toy-3f2a...')
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers

from anatomy.model import TOY, config_path
from anatomy.toy.training import Recipe

CACHE_ENV = "ANATOMY_CACHE"
CODE_VERSION = 4  # bump whenever the task, the encoding or the training loop would change the weights
MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A toy cache directory that is incomplete or whose files do not match its manifest."""


def cache_root() -> Path:
    """``$ANATOMY_CACHE`` if set, else ``~/.cache/anatomy``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "anatomy").expanduser()


def cache_key(recipe: Recipe) -> str:
    """16 hex digits of sha256 over the toy config, ``recipe`` and ``CODE_VERSION``."""
    config = json.loads(config_path(TOY).read_text())
    spec = {"config": config, "recipe": recipe.to_dict(), "code": CODE_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(recipe: Recipe) -> Path:
    """The directory that holds (or will hold) the model trained with ``recipe``."""
    return cache_root() / f"toy-{cache_key(recipe)}"


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> dict:
    """The manifest of ``directory`` once every file matches it; ``CacheError`` naming the first mismatch."""
    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.is_file():
        raise CacheError(f"{directory} has no {MANIFEST}: not a finished toy cache")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        path = Path(directory) / name
        if not path.is_file():
            raise CacheError(f"{path} is listed in {MANIFEST} but missing")
        if sha256(path) != expected:
            raise CacheError(f"{path} does not match its sha256 in {MANIFEST}: the file is corrupted")
    return manifest


def save(model, directory: Path, recipe: Recipe, **facts) -> dict:
    """Write ``model`` to ``directory`` atomically; returns the manifest. ``facts`` are recorded in it.

    If another process finished the same directory first, its copy is kept and ours discarded.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; the finished cache is an ordinary directory
    try:
        model.save_pretrained(scratch)
        files = {p.name: sha256(p) for p in sorted(scratch.iterdir())}
        manifest = {"key": directory.name, "recipe": recipe.to_dict(), "code_version": CODE_VERSION,
                    "files": files, "versions": _versions(), **facts}  # fmt: skip
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks it finished
        os.rename(scratch, directory)  # atomic; fails if ``directory`` already exists
    except OSError:
        if not (directory / MANIFEST).is_file():
            raise
        manifest = verify(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def discard(directory: Path) -> None:
    """Remove a bad cache directory: renamed away first, so no reader ever sees it half-deleted."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{Path(directory).name}.discarded-", dir=Path(directory).parent))
    os.replace(directory, doomed / "cache")
    shutil.rmtree(doomed, ignore_errors=True)


def _versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads()}
