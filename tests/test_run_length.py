"""Run length: trainer.max_steps=N means N, epochs count passes, and two limits that
disagree are refused before training."""

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ssl_zoo.data.sampling import batches_per_epoch
from ssl_zoo.optim.run_plan import RunLengthError, plan_run_length
from ssl_zoo.train import ConfigError, build_all, train
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

QUIET = ["callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]
TINY_RUN = [*TINY_DATA, *TINY_VIT, *TINY_HEAD, *QUIET, "augmentation.transform.n_local=0"]


@pytest.mark.parametrize(
    ("size", "world", "batch"), [(1281167, 8, 64), (1281167, 32, 64), (100, 3, 8), (7, 2, 2), (64, 1, 64)]
)
def test_batches_per_epoch_matches_a_distributed_sampler_and_loader(size, world, batch):
    data = range(size)
    for rank in range(min(world, 2)):
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_size=batch, sampler=sampler, drop_last=True)
        assert batches_per_epoch(size, world, batch, drop_last=True) == len(loader)


def test_max_steps_alone_is_the_run_and_epochs_alone_count_passes():
    assert plan_run_length(10, 1, max_epochs=None, max_steps=468).total_steps == 468
    assert plan_run_length(10, 1, max_epochs=-1, max_steps=468).total_steps == 468  # Lightning's "unset"
    run = plan_run_length(10, 3, max_epochs=2, max_steps=-1)
    assert (run.total_steps, run.steps_per_data_epoch) == (8, 4)  # ceil(10 / 3) steps per epoch
    assert plan_run_length(10, 1, max_epochs=3, max_steps=30).total_steps == 30  # both, agreeing


def test_two_limits_that_disagree_are_refused_naming_both_keys():
    with pytest.raises(RunLengthError, match=r"trainer\.max_steps=125000 and trainer\.max_epochs=2 disagree"):
        plan_run_length(312, 1, max_epochs=2, max_steps=125000)
    with pytest.raises(RunLengthError, match="no end"):
        plan_run_length(312, 1, max_epochs=None, max_steps=-1)
    with pytest.raises(RunLengthError, match="trainer.max_steps"):
        plan_run_length(float("inf"), 1, max_epochs=2, max_steps=-1)


def test_a_max_steps_override_alone_unsets_the_default_epochs(compose_cfg):
    default = compose_cfg([])
    assert (default.trainer.max_epochs, default.trainer.max_steps) == (2, -1)
    stepped = compose_cfg(["trainer.max_steps=468"])
    assert (stepped.trainer.max_epochs, stepped.trainer.max_steps) == (None, 468)
    ddp = compose_cfg(["trainer=ddp_cpu", "trainer.max_steps=7"])
    assert ddp.trainer.max_epochs is None


@pytest.mark.slow
def test_max_steps_longer_than_two_epochs_runs_every_step(compose_cfg):
    # 256 images / batch 32 = 8 steps per epoch: the old preset stopped at 2 epochs = 16.
    parts = build_all(compose_cfg([*TINY_RUN, "trainer.max_steps=20"]))
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    assert parts["trainer"].global_step == 20
    assert parts["method"].total_steps == 20


def test_disagreeing_limits_stop_before_training(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY_RUN, "trainer.max_epochs=1", "trainer.max_steps=5"])
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path)
    message = str(err.value)
    assert "trainer.max_steps=5" in message and "trainer.max_epochs=1" in message
    assert "1 x 8 = 8 optimizer steps" in message
    assert not (tmp_path / "summary.json").exists()


def test_schedules_are_sized_for_the_planned_run(compose_cfg):
    parts = build_all(compose_cfg([*TINY_RUN, "trainer.max_steps=40", "optim.schedule.warmup_epochs=1"]))
    method = parts["method"]
    method.plan_run(plan_run_length(8, 1, None, 40, global_batch_size=32))
    assert (method.total_steps, method.steps_per_epoch, method.schedule.warmup_steps) == (40, 8, 8)
    method.schedule.iterations_per_epoch = 5  # an "epoch" of 5 iterations, whatever the data
    method.plan_run(plan_run_length(8, 1, None, 40, global_batch_size=32))
    assert (method.total_steps, method.steps_per_epoch, method.schedule.warmup_steps) == (40, 5, 5)
    assert torch.isfinite(torch.tensor(method.schedule.lr_at(39)))


def test_epochs_counted_in_images_plan_byols_step_counts():
    # byol.py: max_steps = 300 x 1,281,167 // 4096, warmup = 10 x 1,281,167 // 4096.
    run = plan_run_length(312, 1, max_epochs=300, max_steps=-1, global_batch_size=4096,
                          images_per_epoch=1_281_167, epochs_of_images=True)
    assert (run.total_steps, run.steps_per_data_epoch) == (93_835, 312)
    assert plan_run_length(312, 1, 300, -1, 4096, 1_281_167).total_steps == 93_600  # whole batches per pass
    with pytest.raises(RunLengthError, match="93835 optimizer steps"):
        plan_run_length(312, 1, max_epochs=300, max_steps=93_600, global_batch_size=4096,
                        images_per_epoch=1_281_167, epochs_of_images=True)


@pytest.mark.slow
def test_epochs_counted_in_images_end_mid_pass(compose_cfg):
    # 250 images at batch 32: 7 whole batches per pass, but 2 epochs of images = 500 // 32 = 15 steps.
    overrides = [*TINY_RUN, "data.train_set.num_images=250", "trainer.max_epochs=2",
                 "optim.schedule.iterations_per_epoch=images", "optim.schedule.warmup_epochs=1",
                 "optim.schedule.warmup_rule=fraction"]
    parts = build_all(compose_cfg(overrides))
    method, trainer = parts["method"], parts["trainer"]
    assert (method.total_steps, method.schedule.warmup_steps) == (15, 7)  # 250 // 32 = 7
    trainer.fit(method, datamodule=parts["datamodule"])
    assert trainer.global_step == 15
