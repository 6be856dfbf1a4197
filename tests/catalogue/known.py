"""Known failures: catalogue cases classified ``other`` whose defect lies in a module owned and
being changed elsewhere. Each entry names the file and what goes wrong.

Keys are case ids ``"name[arg=mutation]"``. The CI test fails on any ``other`` outcome not listed
here, and on an entry here that no longer fails (a fix must remove its entry).
"""
from __future__ import annotations

_HUGE = ("huge", "beyond_int64")
_ALLOC = ("size not bounded before torch allocates: 10**12 reaches the allocator (RuntimeError 'can't allocate "
          "memory' from inside torch), 2**70 overflows inside torch ('Overflow when unpacking long long')")

_GROUPS: list[tuple[str, str, tuple[str, ...], str]] = [
]

KNOWN_FAILURES: dict[str, str] = {f"{name}[{arg}={m}]": reason
                                  for name, arg, muts, reason in _GROUPS for m in muts}

KNOWN_HANGS: dict[str, str] = {}
"""Known failures that run past the time limit (stuck in C code, so the alarm fires late) or allocate
gigabytes before failing: the CI test does not run them, ``python -m tests.catalogue`` does (check
there whether one still fails). Every key is also in KNOWN_FAILURES."""
