"""Fingerprints of the files a run depends on (model weights, tokenizer, data), so
that caches and reruns notice when any of them changed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def files_fingerprint(root: Path, max_files: int | None = None) -> str:
    """A digest of every regular file under ``root`` (names, sizes, modification times):
    cheap even for large weights, and it changes whenever any file is replaced.
    Walks with ``os.scandir`` (one stat per file, ~3x faster than ``rglob`` on 30,000
    images); the order is that of the paths' parts, as before."""
    digest = hashlib.sha256()
    root = Path(root)
    if root.is_file():
        stat = root.stat()
        digest.update(f"{root.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:20]
    for parts, _, stat in _regular_files(root, max_files):
        digest.update(f"{'/'.join(parts)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    """Where tunelab caches features, datasets and file hashes (``$TUNELAB_CACHE_DIR``)."""
    return Path(os.environ.get("TUNELAB_CACHE_DIR", "~/.cache/tunelab")).expanduser()


class TooManyFiles(OSError):
    """A folder holds more files than the one it stands for could (a model folder with
    the whole file system under it): refused before anything is read."""


def _regular_files(root: Path, max_files: int | None = None) -> list[tuple[tuple[str, ...], str, os.stat_result]]:
    """(path parts, path, stat) of every regular file under ``root``, sorted by parts;
    folders reached through links are not entered. Walks with ``os.scandir`` (one stat
    per file, ~3x faster than ``rglob`` on 30,000 images). Past ``max_files`` files the
    walk stops with ``TooManyFiles``."""
    if root.is_file():
        return [((root.name,), str(root), root.stat())]
    entries = []
    folders = [(str(root), ())]
    while folders:
        folder, parts = folders.pop()
        with os.scandir(folder) as scan:
            for entry in scan:
                if entry.is_dir():
                    if not entry.is_symlink():
                        folders.append((entry.path, parts + (entry.name,)))
                elif entry.is_file():
                    entries.append((parts + (entry.name,), entry.path, entry.stat()))
                    if max_files is not None and len(entries) > max_files:
                        raise TooManyFiles(f"{root} holds more than {max_files:,} files")
    return sorted(entries, key=lambda e: e[0])


CONTENT_PREFIX = "sha256-"


def content_fingerprint(root: Path, max_files: int | None = None) -> str:
    """A digest of the names and contents of every regular file under ``root``: a file
    rewritten with its size and modification time restored still changes it. Each
    file's hash is cached by path, inode, size, modification and change time (the
    change time cannot be set back), so unchanged data is not read again."""
    cache = _HashCache()
    digest = hashlib.sha256()
    for parts, path, stat in _regular_files(Path(root), max_files):
        digest.update(f"{'/'.join(parts)}:{cache.hash(path, stat)}\n".encode())
    cache.save()
    return CONTENT_PREFIX + digest.hexdigest()[:20]


class _HashCache:
    """File hashes on disk (one JSON file), keyed by what changes whenever content can."""

    # The file read once per process and kept while it does not change on disk (other
    # processes may add to it): fingerprints are asked for often (every cache key, every
    # run's record), and the file grows with the data sets seen.
    _memory: dict[str, tuple] = {}

    def __init__(self):
        self.path = cache_dir() / "file-hashes.json"
        self.changed = False
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            stamp = None
        kept = self._memory.get(str(self.path))
        if kept is not None and kept[0] == stamp:
            self.entries = kept[1]
            return
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            self.entries = {}
        self._memory[str(self.path)] = (stamp, self.entries)

    def hash(self, path: str, stat: os.stat_result) -> str:
        key = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
        cached = self.entries.get(path)
        if isinstance(cached, list) and cached[:4] == key and len(cached) == 5:
            return cached[4]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()[:32]
        self.entries[path] = [*key, value]
        self.changed = True
        return value

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(self.entries), encoding="utf-8")
            os.replace(temporary, self.path)
            self._memory[str(self.path)] = (self.path.stat().st_mtime_ns, self.entries)
        except OSError:  # a read-only cache only costs speed
            pass


def hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model in the local cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an unusual id or cache layout: no revision known
        return None
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/", 1)[1].split("/", 1)[0]
    return None
