"""Large host buffers that are cheap to fill for the first time.

A freshly allocated CPU tensor of many megabytes is backed by pages the
kernel hands out one 4 KiB page at a time, each on its first write. Where
the cost of such a page fault is high (virtual machines in particular), a
recorder that fills a few hundred megabytes of new buffers spends more time
in page faults than in copying. Marking the buffer for transparent huge pages
(``madvise(MADV_HUGEPAGE)``) lets the kernel back it with 2 MiB pages, one
fault per 2 MiB instead of 512.

The advice changes no data and no semantics: where the platform, the kernel
or its transparent-huge-page setting does not support it, the buffer is a
plain ``torch.empty`` tensor.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Sequence

import torch

__all__ = ["empty_host", "HUGEPAGE_MIN_BYTES"]

HUGEPAGE_MIN_BYTES = 4 << 20
"""Buffers smaller than this get no advice (at most one huge page would be used)."""

_MADV_HUGEPAGE = 14
_PAGE = 4096


@functools.cache
def _madvise():
    """libc's ``madvise`` with its argument types, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_hugepages(t: torch.Tensor) -> bool:
    """Ask the kernel to back the pages inside ``t``'s memory with huge pages.

    Only the whole 4 KiB pages inside the tensor's bytes are advised, so no
    memory outside the tensor is affected. Returns whether the advice was
    given and accepted; a ``False`` changes nothing.
    """
    fn = _madvise()
    if fn is None or t.device.type != "cpu" or not t.is_contiguous():
        return False
    start = t.data_ptr()
    stop = start + t.numel() * t.element_size()
    first = -(-start // _PAGE) * _PAGE
    last = stop // _PAGE * _PAGE
    if last - first < _PAGE:
        return False
    return fn(first, last - first, _MADV_HUGEPAGE) == 0


def empty_host(shape: Sequence[int], dtype: torch.dtype,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, huge-page backed when large on CPU."""
    t = torch.empty(tuple(shape), dtype=dtype, device=device)
    if t.device.type == "cpu" and t.numel() * t.element_size() >= HUGEPAGE_MIN_BYTES:
        advise_hugepages(t)
    return t
