"""kNN evaluation (fair step-0 baseline, raw pixels, configurable protocol) and the
learning-curve PNG, through the real config composition and Lightning loop."""

import pytest
import torch
from torch import nn

from ssl_zoo.callbacks.knn import KNNEvaluator, recalibrate_batchnorm
from ssl_zoo.train import build_all, train
from tests.conftest import TINY_DATA, TINY_HEAD


def test_recalibration_sets_exact_batch_statistics_and_keeps_the_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    model.eval()
    weights = [p.clone() for p in model.parameters()]
    images = torch.randn(48, 3, 8, 8) * 3 + 2
    loader = [(images[i : i + 16], None) for i in range(0, 48, 16)]
    assert recalibrate_batchnorm(model, loader, num_batches=2, device=torch.device("cpu")) == 32
    # the cumulative average of the two batches' statistics (BatchNorm keeps unbiased variances)
    batches = [model[0](images[i : i + 16]) for i in (0, 16)]
    mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
    var = torch.stack([x.var(dim=(0, 2, 3)) for x in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1 and not model[1].training  # restored
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_bad_knn_arguments_name_the_key():
    with pytest.raises(ValueError, match="callbacks.knn.recalibrate_batches"):
        KNNEvaluator(recalibrate_batches=-1)
    with pytest.raises(ValueError, match="callbacks.knn.k"):
        KNNEvaluator(k=0)


@pytest.mark.slow
def test_a_run_reports_start_end_raw_pixels_and_draws_its_curve(compose_cfg, tmp_path, capsys):
    overrides = [*TINY_DATA, *TINY_HEAD, "~logger", "callbacks.progress=null", "callbacks.checkpoint=null",
                 "trainer.max_steps=6", "callbacks.knn.every_n_steps=3", "callbacks.knn.k=7",
                 "callbacks.knn.temperature=0.2"]
    summary = train(compose_cfg(overrides), tmp_path)
    assert [h["step"] for h in summary["knn_history"]] == [0, 3, 6]
    assert 0.0 <= summary["knn_top1_raw_pixels"] <= 1.0
    assert (summary["knn_k"], summary["knn_temperature"]) == (7, 0.2)
    png = tmp_path / "learning_curve.png"
    assert summary["learning_curve"] == str(png.resolve())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "k=7, T=0.2" in printed and "raw pixels" in printed and "learning_curve.png" in printed
    assert "k=20" not in printed  # the protocol that ran, not a hard-coded one


@pytest.mark.slow
def test_step0_baseline_uses_recalibrated_batchnorm(compose_cfg):
    # With recalibration, the step-0 evaluation sees BatchNorm statistics of the data
    # (not the initial 0 / 1); without it, they are still the initial ones.
    parts = build_all(compose_cfg([*TINY_DATA, *TINY_HEAD, "~logger", "callbacks.progress=null",
                                   "callbacks.checkpoint=null", "trainer.max_steps=1"]))
    knn = next(cb for cb in parts["callbacks"] if isinstance(cb, KNNEvaluator))
    seen = {}
    original = knn.evaluate

    def record(trainer, pl_module):
        if not seen:
            bn = next(m for m in pl_module.eval_backbone.modules() if isinstance(m, nn.BatchNorm2d))
            seen["mean"] = bn.running_mean.clone()
        return original(trainer, pl_module)

    knn.evaluate = record
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    assert seen["mean"].abs().sum() > 0


def test_curve_draws_from_histories(tmp_path):
    from ssl_zoo.callbacks.curve import draw_learning_curve

    path = draw_learning_curve(tmp_path / "c.png", "t", [(0, 0.3), (50, 0.4), (100, 0.5)], 0.11,
                               "kNN", list(range(1, 101)), [7.0 - 0.01 * i for i in range(100)])
    assert path.stat().st_size > 10_000


def test_curve_without_knn_says_so_and_warns_nothing(tmp_path):
    """callbacks.knn=null: the kNN panel says there was no evaluation (matplotlib warned
    "No artists with labels found to put in legend" before)."""
    import warnings

    from ssl_zoo.callbacks.curve import draw_learning_curve

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = draw_learning_curve(tmp_path / "c.png", "t", [], None, "kNN", [1, 2, 3], [7.0, 6.5, 6.4])
    assert path.stat().st_size > 5_000


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "label"),
    [(3, -1, "Epoch 1/2"), (-1, 500, "Epoch 1 (500-step run)"), (-1, -1, "Epoch 1")],
)
def test_progress_label_names_the_runs_bound(max_epochs, max_steps, label):
    from types import SimpleNamespace

    from ssl_zoo.callbacks.progress import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps)
    assert bar._get_train_description(1).strip() == label


def _summary(history, steps, preempted_at=None):
    return {"method": "BYOL", "data": "ImageFolder", "backbone": "resnet10t", "knn_k": 200, "knn_temperature": 0.1,
            "knn_top1_start": history[0][1] if history else None, "knn_top1_end": history[-1][1] if history else None,
            "knn_top1_raw_pixels": 0.3762, "knn_history": [{"step": s, "top1": v} for s, v in history],
            "probe_top1_end": None, "images_per_sec": 250.0, "wall_time_sec": 120.0, "bad_images": 0,
            "bad_image_examples": [], "preempted_at_step": preempted_at, "stop_reason": None, "health_symptoms": {},
            "learning_curve": None, "checkpoint": None, "run_dir": "/run", "steps": steps}


@pytest.mark.parametrize(
    ("history", "steps", "preempted_at", "expected", "absent"),
    [
        # preempted before any evaluation after step 0: no "-> step 152" gain claimed
        ([(0, 0.349)], 152, 152, ["step 0: 34.90% (no evaluation after it: the run stopped at step 152)",
                                  "preempted at step 152"], ["->", "points"]),
        # a resumed run's first evaluation is at its resume step, not step 0
        ([(500, 0.40), (1000, 0.45)], 1000, None, ["step 500: 40.00%  ->  step 1000: 45.00%  (+5.00 points)"],
         ["step 0", "preempted"]),
        # the last evaluation before a stop is labelled with its own step
        ([(0, 0.349), (500, 0.392)], 640, 640, ["step 0: 34.90%  ->  step 500: 39.20%  (+4.30 points)"],
         ["step 640: 39"]),
    ],
)
def test_summary_labels_each_knn_value_with_the_step_it_was_measured(history, steps, preempted_at, expected, absent,
                                                                     capsys, monkeypatch):
    from ssl_zoo.train import print_summary

    monkeypatch.setenv("COLUMNS", "300")  # rich would wrap the cells of a narrow terminal
    print_summary(_summary(history, steps, preempted_at))
    printed = capsys.readouterr().out
    for text in expected:
        assert text in printed, printed
    for text in absent:
        assert text not in printed, printed
