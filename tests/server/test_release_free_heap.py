"""server/runtime.py `release_free_heap`: the C heap's free pages go back to the system after
start-up (an idle node's RSS target is 60 MB, docs/PERFORMANCE.md)."""

import ctypes
import sys

import pytest

from kalamdb.engine.localviews import rss_bytes
from kalamdb.server.runtime import release_free_heap


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "malloc_trim"),
                    reason="glibc's malloc_trim")
def test_free_pages_in_the_middle_of_the_heap_are_given_back():
    # 4 KiB blocks from the C heap; one in 16 kept, so the freed ones leave holes that free()
    # itself cannot return (only the heap's top is trimmed on free)
    blocks = [ctypes.create_string_buffer(4000) for _ in range(40_000)]
    for b in blocks:
        ctypes.memset(b, 1, 4000)
    kept = blocks[::16]
    del blocks
    before = rss_bytes()
    release_free_heap()
    after = rss_bytes()
    assert before - after > 40 << 20, (before >> 20, after >> 20)
    assert all(b.raw[:1] == b"\x01" for b in kept)  # what is still used is untouched
