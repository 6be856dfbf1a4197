"""Huge-page advice for large host buffers (sepmeasure._memory)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sepmeasure._memory import HUGEPAGE_MIN_BYTES, advise_hugepages, empty_host

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str | None:
    """The bracketed transparent-huge-page mode ('always', 'madvise', 'never'), if readable."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return None
    start, stop = text.find("["), text.find("]")
    return text[start + 1:stop] if 0 <= start < stop else None


def _vma_fields(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that contains ``address``."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            if inside:
                break
            inside = lo <= address < hi
            if inside:
                fields["range"] = head
        elif inside:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def test_empty_host_shape_dtype_device_and_writable():
    for shape, dtype in [((3, 4), torch.float32), ((2048, 1024), torch.float64), ((0, 5), torch.int64)]:
        t = empty_host(shape, dtype)
        assert t.shape == shape and t.dtype == dtype and t.device.type == "cpu"
        assert t.is_contiguous()
        t.fill_(7)
        assert bool((t == 7).all())


def test_advice_keeps_the_data():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1 << 20, generator=g)
    before = t.clone()
    advise_hugepages(t)
    assert torch.equal(t, before)


def test_small_or_strided_tensors_get_no_advice():
    assert advise_hugepages(torch.empty(16)) is False
    big = torch.empty(2048, 2048)
    assert advise_hugepages(big[:, ::2]) is False


def test_advice_is_refused_for_non_cpu_tensors():
    meta = torch.empty(HUGEPAGE_MIN_BYTES, dtype=torch.uint8, device="meta")
    assert advise_hugepages(meta) is False
    assert empty_host((HUGEPAGE_MIN_BYTES,), torch.uint8, device="meta").device.type == "meta"


@pytest.mark.skipif(not sys.platform.startswith("linux") or _thp_mode() not in ("madvise", "always"),
                    reason="needs Linux with transparent huge pages in 'madvise' or 'always' mode")
def test_large_buffers_are_huge_page_eligible():
    t = empty_host((4 * HUGEPAGE_MIN_BYTES // 4,), torch.float32)
    fields = _vma_fields(t.data_ptr() + t.numel() * t.element_size() // 2)
    assert fields, "the buffer's mapping was not found in /proc/self/smaps"
    assert fields.get("THPeligible") == "1", fields
    if _thp_mode() == "madvise":
        assert "hg" in fields.get("VmFlags", "").split(), fields
