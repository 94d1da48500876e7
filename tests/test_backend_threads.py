"""Backend selection across threads: use_backend is local to the thread (and context), set_backend process-wide."""

import threading

import pytest
import torch

import dfkd_fast
from dfkd_fast._backend import use_fused


def test_use_backend_is_thread_local():
    barrier = threading.Barrier(2, timeout=30)
    seen = {}

    def worker(name):
        with dfkd_fast.use_backend(name):
            barrier.wait()  # both threads are inside their blocks now
            seen[name] = (dfkd_fast.get_backend(), use_fused("op", None, torch.device("cpu"), "cpp"))
            barrier.wait()
        seen[name + " after"] = dfkd_fast.get_backend()

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("reference", "fused")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["reference"] == ("reference", False)
    assert seen["fused"][0] == "fused"
    assert seen["reference after"] == seen["fused after"] == "auto"
    assert dfkd_fast.get_backend() == "auto"  # the main thread never saw either block


def test_set_backend_stays_the_process_default():
    seen = []
    previous = dfkd_fast.set_backend("reference")
    try:
        thread = threading.Thread(target=lambda: seen.append(dfkd_fast.get_backend()))
        thread.start()
        thread.join()
        with dfkd_fast.use_backend("fused"):
            assert dfkd_fast.get_backend() == "fused"  # the block wins in its own thread
            with dfkd_fast.use_backend("auto"):
                assert dfkd_fast.get_backend() == "auto"
            assert dfkd_fast.get_backend() == "fused"
        assert dfkd_fast.get_backend() == "reference"
    finally:
        dfkd_fast.set_backend(previous)
    assert seen == ["reference"]


def test_use_backend_rejects_a_bad_name():
    with pytest.raises(ValueError, match="use_backend: backend must be one of"):
        with dfkd_fast.use_backend("gpu"):
            pass
    assert dfkd_fast.get_backend() == "auto"
