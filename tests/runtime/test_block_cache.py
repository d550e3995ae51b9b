"""The CPU buffer cache (block_cache.py): buffers are reused, kept memory stays under the most
ever in use, results do not change, and a fork does not deadlock.

The cache replaces torch's CPU allocator for the whole process, so each test runs in a fresh
interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # every test runs a fresh interpreter (8-22 s each on a loaded machine)
PRELUDE = """
import os, sys, torch
from reformer_seq.runtime.tuning import block_cache as bc
if bc._library() is None:
    print("NO-LIBRARY:", bc.unavailable_reason()); sys.exit(0)
"""


def run_py(code: str, **env) -> str:
    full_env = {**os.environ, **env}
    res = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=REPO, env=full_env,
                         capture_output=True, text=True, timeout=300)
    if "NO-LIBRARY" in res.stdout:
        reason = res.stdout.split("NO-LIBRARY:", 1)[1].strip().splitlines()[0]
        pytest.skip(f"the buffer cache cannot be built here: {reason}")
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_freed_block_is_handed_back_for_the_same_size():
    out = run_py("""
        assert bc.enable(cap=1 << 30, min_bytes=1 << 20)
        a = torch.empty(1 << 20)  # 4 MiB: through the cache
        p = a.data_ptr(); del a
        assert bc.stats()["kept_bytes"] == 4 << 20, bc.stats()
        b = torch.empty(1 << 20)
        assert b.data_ptr() == p, "same size: the kept block comes back"
        s = bc.stats()
        assert s["hits"] == 1 and s["kept_bytes"] == 0 and s["in_use"] == 1, s
        c = torch.empty(1 << 10)  # small: straight to torch's allocator
        assert bc.stats()["in_use"] == 1
        del b
        bc.release()
        assert bc.stats()["kept_bytes"] == 0
        print("ok")
    """)
    assert "ok" in out


def test_kept_plus_used_never_exceeds_the_peak_in_use():
    out = run_py("""
        MiB = 1 << 20
        assert bc.enable(cap=1 << 30, min_bytes=MiB)
        blocks = [torch.empty(MiB // 4) for _ in range(3)]  # 3 MiB in use at once: the peak
        del blocks
        assert bc.stats()["kept_bytes"] == 3 * MiB
        big = torch.empty(2 * MiB // 4)  # no 2 MiB block kept: a fresh one, and room is made
        s = bc.stats()
        assert s["misses"] == 4, s
        assert s["kept_bytes"] + 2 * MiB <= 3 * MiB, s  # only one 1 MiB block may stay
        small = torch.empty(MiB // 4)
        assert bc.stats()["hits"] == 1  # ... and it is reused
        # the cap bounds what is kept
        assert bc.enable(cap=MiB, min_bytes=MiB)
        del big, small
        assert bc.stats()["kept_bytes"] <= MiB, bc.stats()
        print("ok")
    """)
    assert "ok" in out


def test_training_step_is_unchanged_and_the_model_turns_the_cache_on_inside_the_switch():
    """Loss and every gradient are the same with every buffer over 64 KiB going through the
    cache. The model turns it on above the policy's buffer_cache_from_elems (lowered here) only inside
    runtime_tuning(); outside (a library user's default) it never does, and leaving the switch
    frees what the cache kept."""
    out = run_py("""
        from reformer_seq import ReformerConfig, ReformerLM, runtime_tuning
        from reformer_seq.runtime.tuning import heap
        cfg = ReformerConfig(vocab_size=9, dim=32, depth=2, heads=2, bucket_size=8, n_hashes=2, causal=True,
                             max_seq_len=4096, reversible=True, attention="lsh", dropout=0.0)
        torch.manual_seed(0)
        m = ReformerLM(cfg)
        x = torch.randint(0, 9, (2, 4096), generator=torch.Generator().manual_seed(1))
        def step():
            m.zero_grad()
            torch.manual_seed(5)
            lo = m(x)
            loss = torch.nn.functional.cross_entropy(lo[:, :-1].reshape(-1, 9), x[:, 1:].reshape(-1))
            loss.backward()
            return loss.item(), [p.grad.clone() for p in m.parameters()]
        ref_loss, ref_grads = step()
        assert bc.stats()["hits"] + bc.stats()["misses"] == 0  # below the threshold: not enabled
        from reformer_seq.runtime.policy import set_policy
        set_policy(buffer_cache_from_elems=1, long_input_elems=1, buffer_cache_min_bytes=64 << 10)
        step()
        assert bc.stats()["hits"] + bc.stats()["misses"] == 0  # above it, but tuning is off by default
        assert heap._done is False  # nor are the heap thresholds touched
        with runtime_tuning():
            for _ in range(3):
                loss, gr = step()
                assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss), (loss, ref_loss)
                for a, b in zip(gr, ref_grads):
                    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), float((a - b).abs().max())
            s = bc.stats()
            assert s["hits"] > 50, s  # steps after the first reuse their buffers
            assert heap._done is True
        assert bc.stats()["kept_bytes"] == 0, bc.stats()  # left the switch: nothing kept
        hits = bc.stats()["hits"]
        step()
        assert bc.stats()["hits"] == hits and bc.stats()["kept_bytes"] == 0  # and nothing reused after
        print("ok", s)
    """)
    assert "ok" in out


def test_fork_while_another_thread_holds_the_lock_does_not_deadlock():
    """A fork while another thread is inside the cache (holding its lock): the fork handlers wait
    for the lock and hand the child a free one, so the child's allocations through the inherited
    cache go on. (Without the handlers the child blocks forever on the copied, held lock: it is
    killed after 20 s and the test fails.) The holding thread is a ctypes call, which releases the
    GIL, so the fork really happens while the lock is held."""
    out = run_py("""
        import threading, time
        assert bc.enable(cap=1 << 30, min_bytes=1 << 16)
        keep = [torch.empty(1 << 16) for _ in range(4)]
        del keep
        holder = threading.Thread(target=bc._LIB.lib.seq_block_cache_hold_lock, args=(300_000,))
        holder.start()
        time.sleep(0.05)  # the holder is inside, with the lock
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child: allocate and free through the inherited cache
            t = torch.empty(1 << 16); t.fill_(1.0); del t
            os._exit(0)
        waited = time.perf_counter() - t0
        for _ in range(2000):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9); os.waitpid(pid, 0)
            raise SystemExit("child deadlocked")
        holder.join()
        assert os.WEXITSTATUS(status) == 0
        assert waited > 0.1, waited  # the fork waited for the holder to let go
        print("ok", round(waited, 3))
    """)
    assert "ok" in out


def test_switches_and_bad_settings():
    out = run_py("""
        assert bc.enable() is False
        print("off")
    """, SEQFORMER_BLOCK_CACHE="0")
    assert "off" in out
    out = run_py("""
        try:
            bc.enable()
        except ValueError as e:
            print("error:", e)
    """, SEQFORMER_BLOCK_CACHE_MB="lots")
    assert "SEQFORMER_BLOCK_CACHE_MB='lots'" in out and "whole number" in out
