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
        return sum(float((v - pb[k]).detach().abs().sum()) for k, v in a.named_parameters())
    assert dist(warm, first) < 0.05 * dist(scratch, first)


def test_the_committed_unet_imported_from_onnx_is_the_same_function():
    """A campaign can continue from a model set that has only its ONNX file (BatchNorm fused)."""
    from pathlib import Path

    import onnxruntime as ort

    from hexnode.train.nets import SegUNet
    from hexnode.train.onnx_import import freeze_batchnorm, seg_from_onnx

    path = Path(__file__).resolve().parents[2] / "models" / "seg.onnx"
    net = SegUNet(width=8)
    net.load_state_dict(seg_from_onnx(path, 8))
    x = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    net.train()
    freeze_batchnorm(net)  # as a run started from it trains: the statistics stay the file's
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    with pytest.raises(ValueError, match="convolutions|is"):
        seg_from_onnx(path, 12)


def test_the_committed_campaign_is_where_the_next_run_starts(tmp_path):
    """models/campaign: the next run loads its U-Net (BatchNorm stays frozen: run 1 came from ONNX)
    and CNN weights, and adds itself to the history."""
    import json
    from pathlib import Path

    from hexnode.train.campaign import seg_init as _seg_init
    from hexnode.train.campaign import write_campaign
    from hexnode.train.nets import HECNN, SegUNet

    campaign = Path(__file__).resolve().parents[2] / "models" / "campaign"
    weights, frozen = _seg_init(campaign, 8)
    assert frozen
    SegUNet(width=8).load_state_dict(weights)
    HECNN().load_state_dict(torch.load(campaign / "cnn.pt", weights_only=True))
    runs = json.loads((campaign / "campaign.json").read_text())["runs"]
    totals = write_campaign(tmp_path, {"runs_before": runs, "run": {"seg_steps": 7, "cnn_steps": 3},
                                       "seg_weights": weights, "cnn_weights": {}}, 10.0, {"n": 1})
    assert totals["runs"] == len(runs) + 1
    assert totals["seg_steps"] == sum(r.get("seg_steps") or 0 for r in runs) + 7
