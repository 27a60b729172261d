"""glibc's ``posix_spawn`` through ctypes, for what ``os.posix_spawn`` cannot do.

``os.posix_spawn`` holds the GIL for the whole call, and with glibc's CLONE_VFORK the
call lasts until the child has exec'd: on a busy machine milliseconds, during which the
event loop stands still (measured: gaps of 4-9 ms in another thread's 0.2 ms ticks,
against 1 ms with this binding; benchmarks/exec_spawn.py). A ctypes call releases the
GIL, so spawns run in worker threads while the loop serves. It also reaches
``posix_spawn_file_actions_addchdir_np`` (glibc 2.29, a working directory without
fork) and ``addclosefrom_np`` (glibc 2.34, nothing but stdio reaches the program).

:data:`AVAILABLE` is False where the C library lacks a function; the caller then uses
``subprocess.Popen``, which releases the GIL as well.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence

POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
FLAGS = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSID
OPAQUE_BYTES = 1024  # posix_spawn_file_actions_t is 80 and posix_spawnattr_t 336 on x86_64
SIGSET_BYTES = 128  # sigset_t: 1024 bits
FUNCTIONS = (
    "posix_spawn", "posix_spawn_file_actions_init", "posix_spawn_file_actions_destroy",
    "posix_spawn_file_actions_adddup2", "posix_spawn_file_actions_addchdir_np",
    "posix_spawn_file_actions_addclosefrom_np", "posix_spawnattr_init",
    "posix_spawnattr_destroy", "posix_spawnattr_setflags", "posix_spawnattr_setsigdefault",
    "posix_spawnattr_setsigmask", "sigfillset", "sigemptyset",
)  # fmt: skip


def _load() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library this process runs on
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in FUNCTIONS):
        return None
    libc.posix_spawnattr_setflags.argtypes = (ctypes.c_void_p, ctypes.c_short)
    libc.posix_spawn.argtypes = (
        ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p,
    )  # fmt: skip
    return libc


LIBC = _load()
AVAILABLE = LIBC is not None


def _strings(words: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(words) + 1))(*words, None)


class Prepared:
    """What every spawn of one program shares, made once: its path and argv as C strings
    and its spawn attributes (a session of its own, every signal at its default and
    none blocked). posix_spawn only reads them, so threads share them safely."""

    def __init__(self, path: str, argv: Sequence[str], cwd: str | None) -> None:
        assert LIBC is not None
        self.path = os.fsencode(path)
        self.cwd = os.fsencode(cwd) if cwd is not None else None
        self.argv = _strings([os.fsencode(word) for word in argv])
        self.attributes = ctypes.create_string_buffer(OPAQUE_BYTES)
        every_signal = ctypes.create_string_buffer(SIGSET_BYTES)
        no_signal = ctypes.create_string_buffer(SIGSET_BYTES)
        LIBC.posix_spawnattr_init(self.attributes)
        LIBC.sigfillset(every_signal)
        LIBC.sigemptyset(no_signal)
        LIBC.posix_spawnattr_setsigdefault(self.attributes, every_signal)
        LIBC.posix_spawnattr_setsigmask(self.attributes, no_signal)
        LIBC.posix_spawnattr_setflags(self.attributes, FLAGS)

    def spawn(self, env: Mapping[str, str], stdio: Sequence[int]) -> int:
        """Start the program with ``stdio`` as 0, 1, 2 and nothing else open; the pid.

        Raises:
            OSError: the program could not be started (the C library's error).
        """
        assert LIBC is not None
        actions = ctypes.create_string_buffer(OPAQUE_BYTES)
        LIBC.posix_spawn_file_actions_init(actions)
        try:
            for target, fd in enumerate(stdio):
                LIBC.posix_spawn_file_actions_adddup2(actions, fd, target)
            LIBC.posix_spawn_file_actions_addclosefrom_np(actions, len(stdio))
            if self.cwd is not None:
                LIBC.posix_spawn_file_actions_addchdir_np(actions, self.cwd)
            variables = _strings([os.fsencode(f"{key}={value}") for key, value in env.items()])
            pid = ctypes.c_int()
            error = LIBC.posix_spawn(ctypes.byref(pid), self.path, actions, self.attributes,
                                     self.argv, variables)  # fmt: skip
        finally:
            LIBC.posix_spawn_file_actions_destroy(actions)
        if error:
            raise OSError(error, os.strerror(error), os.fsdecode(self.path))
        return pid.value
