"""The health monitor through the real config and Lightning loop: forced collapses are
named (once) and can stop the run. Also the symptom rules alone."""

import csv
import logging
import math

import pytest

from ssl_zoo.callbacks.health import HealthMonitor, diagnose, measure
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.train import build_all, train
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

QUIET = [*TINY_DATA, *TINY_VIT, *TINY_HEAD, "callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null",
         "callbacks.curve=null", "callbacks.health.every_n_steps=1", "trainer.log_every_n_steps=1",
         "+trainer.enable_progress_bar=false"]


def _health_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ssl_zoo.health"]


def test_bad_health_arguments_name_the_key():
    with pytest.raises(ValueError, match="callbacks.health.every_n_steps"):
        HealthMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="callbacks.health.sharp_kl"):
        HealthMonitor(sharp_kl=2.0)


def test_symptom_rules():
    dims = {"N": 64, "D": 512, "K": 256}
    ln_k = math.log(256)
    healthy = {"embedding_std": 0.035, "embedding_std_ratio": 0.8, "rankme": 40.0,
               "teacher_entropy": 2.6, "kl_to_uniform": 0.6, "prototype_usage": 0.17}
    assert diagnose(healthy, dims, step=5) == {}
    found = diagnose({**healthy, "embedding_std": 1e-5, "embedding_std_ratio": 2e-4, "rankme": 1.01}, dims, step=5)
    assert list(found) == ["representation_collapse"] and "lower optim.schedule.base_lr" in found["representation_collapse"]
    assert list(diagnose({**healthy, "teacher_entropy": ln_k, "kl_to_uniform": 0.0}, dims, 5)) == ["uniform_collapse"]
    sharp = diagnose({**healthy, "teacher_entropy": 0.0, "kl_to_uniform": ln_k, "prototype_usage": 1 / 256}, dims, 5)
    assert list(sharp) == ["sharp_collapse"] and "1 of K=256" in sharp["sharp_collapse"]
    # BYOL / supervised: no teacher signals, only the representation is judged
    assert diagnose({"embedding_std_ratio": 0.8, "embedding_std": 0.035, "rankme": 40.0}, {"N": 64, "D": 512}, 5) == {}


@pytest.mark.slow
def test_a_flat_teacher_is_named_uniform_collapse_once(compose_cfg, tmp_path, caplog):
    # Teacher temperature 10: the cosine logits of the weight-normalised head (in [-1, 1])
    # give targets within 1e-3 of uniform from the first step.
    # Seen at every check; named once, at the third in a row (callbacks.health.patience=3).
    cfg = compose_cfg([*QUIET, "trainer.max_steps=5", "method.teacher_temp=10", "method.warmup_teacher_temp=10"])
    with caplog.at_level(logging.WARNING, logger="ssl_zoo.health"):
        summary = train(cfg, tmp_path)
    warnings = _health_warnings(caplog)
    assert len(warnings) == 1 and "uniform collapse at step 3" in warnings[0] and "lower method.teacher_temp" in warnings[0]
    assert summary["steps"] == 5 and summary["stop_reason"] is None  # warning only: stop_on_collapse is off
    assert summary["health_symptoms"]["uniform_collapse"]["step"] == 3
    rows = list(csv.DictReader(next(tmp_path.glob("csv/**/metrics.csv")).open()))
    entropy = [float(r["health/teacher_entropy"]) for r in rows if r.get("health/teacher_entropy")]
    assert len(entropy) == 5 and all(e == pytest.approx(math.log(256), rel=1e-3) for e in entropy)


@pytest.mark.slow
def test_sharp_collapse_stops_the_run_when_asked(compose_cfg, tmp_path, caplog):
    # No centering (the center never moves from 0), a very sharp teacher that follows the
    # student closely and a high lr: every image goes to one prototype within a few steps
    # (5 with one data order, ~10 with another: the limit leaves room for any seed).
    cfg = compose_cfg([*QUIET, "trainer.max_steps=40", "method.center_momentum=1.0", "method.teacher_temp=0.01",
                       "method.warmup_teacher_temp=0.01", "method.momentum_teacher=0.5", "optim.schedule.base_lr=0.1",
                       "callbacks.health.stop_on_collapse=true"])
    with caplog.at_level(logging.WARNING, logger="ssl_zoo.health"):
        summary = train(cfg, tmp_path)
    assert summary["steps"] < 40
    assert summary["stop_reason"].startswith(f"stopped at step {summary['steps']} ")
    assert "sharp collapse" in summary["stop_reason"] and "centering off or too weak" in summary["stop_reason"]
    assert any("stopping the run" in w for w in _health_warnings(caplog))


# A healthy start of every method staying quiet: tests/test_metric_names.py.


def test_step_signals_follow_the_contract_and_sinkhorn_has_no_center(compose_cfg):
    parts = build_all(compose_cfg([*QUIET, "method.teacher_targets=sinkhorn_knopp", "data.batch_size=8"]))
    method, datamodule = parts["method"], parts["datamodule"]
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    method.plan_run(RunPlan(total_steps=10, steps_per_data_epoch=5, global_batch_size=8))
    method.compute_loss(batch, step=0)
    signals = method.step_signals
    assert set(signals) == {"student_features", "eval_features", "teacher_probs"} <= set(SSLMethod.STEP_SIGNALS)
    assert signals["student_features"].shape == (16, 64) and signals["teacher_probs"].shape == (16, 256)
    assert not any(t.requires_grad for t in signals.values())
    values, _ = measure(signals)
    assert "center_norm" not in values and "teacher_entropy" in values
