"""The online linear probe learns from the training batches without touching pretraining:
same seed, probe on or off, bitwise the same method and the same random-number stream."""

import random

import lightning as L
import numpy as np
import pytest
import torch

from ssl_zoo.callbacks.probe import OnlineLinearProbe
from ssl_zoo.train import build_all
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

RUN = [*TINY_DATA, *TINY_VIT, *TINY_HEAD, "~logger", "callbacks.knn=null", "callbacks.progress=null",
       "callbacks.checkpoint=null", "callbacks.curve=null", "+trainer.enable_progress_bar=false",
       "trainer.max_steps=4"]
PROBE_ON = "callbacks.probe={_target_: ssl_zoo.callbacks.probe.OnlineLinearProbe, every_n_steps: 2}"


def test_bad_probe_arguments_name_the_key():
    with pytest.raises(ValueError, match="callbacks.probe.every_n_steps"):
        OnlineLinearProbe(every_n_steps=-1)
    with pytest.raises(ValueError, match="callbacks.probe.lr"):
        OnlineLinearProbe(lr=0)


def _fit(compose_cfg, extra):
    cfg = compose_cfg([*RUN, *extra])
    L.seed_everything(cfg.seed, workers=True)  # as train() does
    parts = build_all(cfg)
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1])
    return parts, {k: v.clone() for k, v in parts["method"].state_dict().items()}, rng


@pytest.mark.slow
def test_probe_changes_neither_the_method_nor_the_random_stream(compose_cfg):
    with_probe, state_on, rng_on = _fit(compose_cfg, [PROBE_ON])
    _, state_off, rng_off = _fit(compose_cfg, [])
    probe = next(cb for cb in with_probe["callbacks"] if isinstance(cb, OnlineLinearProbe))
    assert [step for step, _ in probe.history] == [2, 4] and all(0 <= top1 <= 1 for _, top1 in probe.history)
    assert probe.head[1].weight.abs().sum() > 0  # it learned something
    assert state_on.keys() == state_off.keys()
    assert all(torch.equal(state_on[k], state_off[k]) for k in state_on), "the probe changed pretraining"
    assert torch.equal(rng_on[0], rng_off[0]) and rng_on[1] == rng_off[1] and np.array_equal(rng_on[2], rng_off[2])
