"""simsearch.system: per-thread priority (the service's background threads)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from simsearch.system import lower_thread_priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_lower_thread_priority_changes_the_calling_thread_and_those_it_starts_only():
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice()
    got: dict[str, int | bool] = {}

    def background():
        got["done"] = lower_thread_priority(2)
        got["self"] = nice()
        child = threading.Thread(target=lambda: got.setdefault("child", nice()))
        child.start()
        child.join()
        got["zero"] = lower_thread_priority(0)
        got["capped"] = lower_thread_priority(100) and nice() == 19

    t = threading.Thread(target=background)
    t.start()
    t.join()
    assert got == {"done": True, "self": min(19, base + 2), "child": min(19, base + 2), "zero": False,
                   "capped": True}  # fmt: skip
    assert nice() == base  # the caller's thread is left alone
