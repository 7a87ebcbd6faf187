"""Training that accumulates (issue 21): a loop killed with SIGKILL and resumed from its checkpoint
ends with exactly the weights of a loop that was never stopped; a campaign's next run starts
from the last run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hexnode.synth.phantom import generate_case  # noqa: E402
from hexnode.train import checkpoint as ckpt  # noqa: E402
from hexnode.train.seg_train import SliceBank, train_seg  # noqa: E402

STEPS = 40
KW = dict(seconds=0, steps=STEPS, width=4, crop=96, batch=2, seed=3)


def _bank(tmp_path):
    bank = SliceBank()
    for i in range(2):
        c = generate_case(4, i, n_slices=4)
        bank.add_case(c.hu, (c.mask > 0).astype(np.uint8), np.random.default_rng(i))
    path = tmp_path / "bank.npz"
    np.savez(path, hu=np.stack(bank.hu), mask=np.stack(bank.mask))
    return bank, path


def _same(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_seg_loop_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    bank, bank_path = _bank(tmp_path)
    reference, steps = train_seg(bank, **KW)
    assert steps == STEPS

    ck = tmp_path / "seg.ckpt"
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from hexnode.train.checkpoint import Every
        from hexnode.train.seg_train import SliceBank, train_seg
        torch.set_num_threads(1)
        z = np.load({str(bank_path)!r})
        bank = SliceBank(list(z["hu"]), list(z["mask"]))
        train_seg(bank, checkpoint=__import__("pathlib").Path({str(ck)!r}), every=Every(steps=10), **{KW!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        state = ckpt.load(ck) if ck.exists() else None
        if state is not None and 10 <= state.step < STEPS:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the loop finished before it could be killed: raise STEPS"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.load(ck)
    assert killed_at is not None and not killed_at.done and 10 <= killed_at.step < STEPS

    resumed, steps = train_seg(bank, checkpoint=ck, **KW)
    assert steps == STEPS
    assert _same(resumed.state_dict(), reference.state_dict())
    assert ckpt.load(ck).done

    # a finished checkpoint is the model: no further step is taken
    again, steps = train_seg(bank, checkpoint=ck, **KW)
    assert steps == STEPS and _same(again.state_dict(), reference.state_dict())


def test_a_campaign_run_starts_from_the_previous_weights(tmp_path):
    torch.set_num_threads(1)
    bank, _ = _bank(tmp_path)
    first, _ = train_seg(bank, **dict(KW, steps=5))
    scratch, _ = train_seg(bank, **dict(KW, steps=1, seed=4))  # another random initialisation
    warm, _ = train_seg(bank, init=first.state_dict(), **dict(KW, steps=1, seed=4))  # same seed as scratch
    # one step from the first run's weights stays at them (warm-up learning rate); from scratch it does not
    def dist(a, b):
        pb = dict(b.named_parameters())
        return sum(float((v - pb[k]).abs().sum()) for k, v in a.named_parameters())
    assert dist(warm, first) < 0.05 * dist(scratch, first)
