"""One job at a time per release: an flock on OUT.owner/lock.

Why: an encrypt, resume, forget or decrypt that ran beside another on the same OUT could
interleave shard writes, manifest swaps and custody entries. `fcntl.flock` is released by
the kernel when the holder exits or is killed, so a crash never leaves a stale lock. The
lock file is removed (while still held) when the job ends, and OUT.owner too if the lock
made it and it is empty, so a refused job leaves nothing behind; a waiter that locked a file
just unlinked sees the inode change and tries again.

`holds_release` (for encrypt and decrypt; forget does the same itself) also finishes a
forget that a kill interrupted (`encrypt.forget.recover`) before the job starts, so every
owner job sees a whole release.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

from encrypt.journal import owner_dir
from encrypt.sources import InputError
from shards import storage

LOCK_NAME = "lock"


@contextlib.contextmanager
def release_lock(out_dir: Path) -> Iterator[Path]:
    """Hold OUT's lock, or raise InputError (exit 2) naming OUT when another job holds it."""
    out_dir = storage.location(out_dir)  # a URL stays one (its lock is in a local owner folder)
    private = owner_dir(out_dir)
    path = private / LOCK_NAME
    for _ in range(100):  # only a holder unlinking at that very moment makes us go round
        made_dir = not private.exists()
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:  # OUT.owner removed by a holder that just finished
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(out_dir, "another patchveil job (encrypt, resume, forget or decrypt) holds this "
                                      f"release; wait for it to end ({path} is its lock)") from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise InputError(out_dir, f"could not take the lock {path}")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while held: nobody else can own this inode now
        os.close(fd)
        if made_dir:
            with contextlib.suppress(OSError):
                private.rmdir()  # only if empty


def holds_release(fn):
    """Run `fn(out_dir, keystore, ...)` holding OUT's lock, after finishing an interrupted forget."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        out_dir, keystore = storage.location(bound.arguments["out_dir"]), bound.arguments["keystore"]
        with release_lock(out_dir):
            from encrypt.forget import recover  # forget imports this module

            recover(out_dir, keystore)
            return fn(*args, **kwargs)

    return locked
