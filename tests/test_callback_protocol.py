"""How callbacks and train meet (callbacks/protocol.py): each callback reports its own
summary.json keys and receives the run's facts through configure_run; train knows no
callback class. And one wording for every callback's argument errors (callbacks/checks.py)."""

import json

import lightning as L
import pytest

from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.callbacks.curve import LearningCurve
from ssl_zoo.callbacks.health import HealthMonitor
from ssl_zoo.callbacks.knn import KNNEvaluator
from ssl_zoo.callbacks.nonfinite import NonFiniteGuard
from ssl_zoo.callbacks.probe import OnlineLinearProbe
from ssl_zoo.callbacks.protocol import SUMMARY_WHEN_OFF, RunContext, configure_run, merge_reports
from ssl_zoo.callbacks.resume import ResumeState
from ssl_zoo.callbacks.throughput import Throughput
from ssl_zoo.callbacks.viz import Visualizer
from ssl_zoo.train import train
from tests.conftest import TINY_DATA, TINY_HEAD

# summary.json's keys before callbacks reported their own (train.py built them all).
RUN_KEYS = {"method", "backbone", "data", "precision", "steps", "epochs", "wall_time_sec", "checkpoint",
            "bad_images", "bad_image_examples", "run_dir"}
CALLBACK_KEYS = {"knn_top1_start", "knn_top1_end", "knn_top1_raw_pixels", "knn_k", "knn_temperature",
                 "knn_history", "probe_top1_end", "learning_curve", "images_per_sec", "stop_reason",
                 "health_symptoms", "preempted_at_step"}
GUARD_KEYS = {"skipped_steps", "skipped_step_causes", "overflow_steps"}
PRECISION_KEYS = {"precision", "source", "reason"}

REPORTING = ("knn", "probe", "curve", "throughput", "health", "resume", "nonfinite")
RUN = [*TINY_DATA, *TINY_HEAD, "~logger", "callbacks.progress=null", "trainer.max_steps=2"]
PROBE_ON = "callbacks.probe={_target_: ssl_zoo.callbacks.probe.OnlineLinearProbe, every_n_steps: 1}"
CUSTOM_ON = "+callbacks.custom={_target_: tests.test_callback_protocol.Reporter}"


class Reporter(L.Callback):
    """A callback train has never heard of: it reports what configure_run told it."""

    def __init__(self) -> None:
        self.context: RunContext | None = None

    def configure_run(self, context: RunContext) -> None:
        self.context = context

    def summary(self) -> dict:
        return {"custom_run_dir": str(self.context.run_dir), "custom_auto_precision": self.context.auto_precision,
                "custom_resume_command": self.context.resume_command}


class Silent(L.Callback):
    """A callback without summary() or configure_run (Lightning's own, for one)."""


# --- the protocol, unit by unit -------------------------------------------------------


def test_every_reporting_callback_reports_json_ready_keys_that_have_a_default():
    callbacks = [KNNEvaluator(), OnlineLinearProbe(), LearningCurve(), Throughput(), HealthMonitor(), ResumeState()]
    reported = {}
    for callback in callbacks:
        report = callback.summary()
        json.dumps(report)  # JSON-ready before the run too
        assert set(report) <= set(SUMMARY_WHEN_OFF), type(callback).__name__
        reported.update(report)
    assert set(reported) == set(SUMMARY_WHEN_OFF) == CALLBACK_KEYS  # no default without an owner
    assert not hasattr(Visualizer(), "summary")  # pictures go to files, not to summary.json


def test_a_custom_callback_contributes_its_keys_and_dicts_merge_into_dicts():
    class Custom(L.Callback):
        def summary(self) -> dict:
            return {"custom": 3, "images_per_sec": 12.5, "precision": {"fp32_fallback_step": 7}}

    run = {"method": "DINO", "precision": {"precision": "bf16-mixed", "source": "auto"}}
    summary = merge_reports(run, [Silent(), Custom()])
    assert summary["custom"] == 3 and summary["images_per_sec"] == 12.5  # a default overridden
    assert summary["precision"] == {"precision": "bf16-mixed", "source": "auto", "fp32_fallback_step": 7}
    assert summary["knn_history"] == [] and summary["method"] == "DINO"
    assert run["precision"] == {"precision": "bf16-mixed", "source": "auto"}  # the input is left as it was
    # defaults are copied: a report filling one run's list does not leak into the next
    merge_reports({}, [])["knn_history"].append(1)
    assert SUMMARY_WHEN_OFF["knn_history"] == [] and merge_reports({}, [])["knn_history"] == []


def test_configure_run_reaches_the_callbacks_that_declare_it(tmp_path):
    guard, resume, silent = NonFiniteGuard(), ResumeState(), Silent()
    configure_run([guard, resume, silent], RunContext(tmp_path, auto_precision=True, resume_command="ssl-zoo train x"))
    assert guard.allow_fp32_fallback and resume.resume_command == "ssl-zoo train x"
    configure_run([guard], RunContext(tmp_path, auto_precision=False, resume_command=""))
    assert not guard.allow_fp32_fallback  # an explicit trainer.precision is kept (the guard only skips)
    assert guard.summary()["precision"] == {"fp32_fallback_step": None}


# --- summary.json through the real config and train() ---------------------------------


@pytest.mark.slow
def test_summary_json_has_the_same_keys_with_every_callback_on(compose_cfg, tmp_path):
    summary = train(compose_cfg([*RUN, PROBE_ON]), tmp_path)
    assert set(summary) == RUN_KEYS | CALLBACK_KEYS | GUARD_KEYS
    assert set(summary["precision"]) == PRECISION_KEYS | {"fp32_fallback_step"}
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [h["step"] for h in summary["knn_history"]] == [0, 2] and summary["knn_k"] == 20
    assert 0 <= summary["probe_top1_end"] <= 1 and summary["images_per_sec"] > 0
    assert summary["learning_curve"] == str((tmp_path / "learning_curve.png").resolve())
    assert (summary["skipped_steps"], summary["skipped_step_causes"], summary["overflow_steps"]) == (0, {}, 0)
    assert summary["precision"]["fp32_fallback_step"] is None and summary["stop_reason"] is None


@pytest.mark.slow
def test_summary_json_keeps_its_keys_with_the_callbacks_off_and_takes_a_new_one(compose_cfg, tmp_path):
    off = [f"callbacks.{name}=null" for name in REPORTING if name != "probe"]
    summary = train(compose_cfg([*RUN, *off, CUSTOM_ON]), tmp_path)
    custom = {"custom_run_dir", "custom_auto_precision", "custom_resume_command"}
    # the guard's keys were absent without the guard before, and still are
    assert set(summary) == RUN_KEYS | CALLBACK_KEYS | custom
    assert set(summary["precision"]) == PRECISION_KEYS
    assert {key: summary[key] for key in CALLBACK_KEYS} == SUMMARY_WHEN_OFF
    # the custom callback got the run's facts before fit and reported them
    assert summary["custom_run_dir"] == str(tmp_path)
    assert summary["custom_auto_precision"] is (summary["precision"]["source"] == "auto")
    assert summary["custom_resume_command"].endswith(f"hydra.run.dir={tmp_path.resolve()} resume=auto")
    assert json.loads((tmp_path / "summary.json").read_text())["custom_run_dir"] == str(tmp_path)


# --- argument errors ------------------------------------------------------------------


def test_check_arg_names_the_key_the_expectation_and_the_value():
    check_arg("knn", "k", 3, lambda v: v >= 1, ">= 1")  # fine: nothing raised
    with pytest.raises(ValueError, match=r"^callbacks\.knn\.k must be >= 1, got 0$"):
        check_arg("knn", "k", 0, lambda v: v >= 1, ">= 1")
    with pytest.raises(ValueError, match=r"^callbacks\.x\.y must be > 0, got 'abc' \(a hint\)$"):
        check_arg("x", "y", "abc", lambda v: v > 0, "> 0", hint="a hint")  # not comparable: same message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KNNEvaluator(k=0), r"^callbacks\.knn\.k must be >= 1, got 0$"),
        (lambda: KNNEvaluator(k="twenty"), r"^callbacks\.knn\.k must be >= 1, got 'twenty'$"),
        (lambda: KNNEvaluator(temperature=0.0), r"^callbacks\.knn\.temperature must be > 0, got 0\.0$"),
        (lambda: KNNEvaluator(every_n_steps=-1), r"^callbacks\.knn\.every_n_steps must be >= 0 \(0: start and end only\)"),
        (lambda: KNNEvaluator(recalibrate_batches=-2), r"^callbacks\.knn\.recalibrate_batches must be >= 0, got -2$"),
        (lambda: OnlineLinearProbe(every_n_steps=1.5), r"^callbacks\.probe\.every_n_steps must be an int >= 0"),
        (lambda: OnlineLinearProbe(lr=0), r"^callbacks\.probe\.lr must be > 0, got 0$"),
        (lambda: OnlineLinearProbe(weight_decay=-0.1), r"^callbacks\.probe\.weight_decay must be >= 0, got -0\.1$"),
        (lambda: HealthMonitor(every_n_steps=0),
         r"^callbacks\.health\.every_n_steps must be an int >= 1, got 0 \(to turn the monitor off set callbacks\.health=null\)$"),
        (lambda: HealthMonitor(uniform_entropy=0), r"^callbacks\.health\.uniform_entropy must be in \(0, 1\]"),
        (lambda: HealthMonitor(min_std_ratio=-1), r"^callbacks\.health\.min_std_ratio must be >= 0, got -1$"),
        (lambda: HealthMonitor(min_rankme=0.5), r"^callbacks\.health\.min_rankme must be >= 1, got 0\.5$"),
        (lambda: HealthMonitor(patience=0), r"^callbacks\.health\.patience must be an int >= 1, got 0$"),
        (lambda: NonFiniteGuard(max_skipped_steps=-1), r"^callbacks\.nonfinite\.max_skipped_steps must be an int >= 0, got -1"),
        (lambda: Visualizer(every_n_steps=-1), r"^callbacks\.viz\.every_n_steps must be >= 0 \(0: at the end only\)"),
        (lambda: Visualizer(num_images=0), r"^callbacks\.viz\.num_images must be >= 1, got 0$"),
        (lambda: ResumeState(preempt_signals=["SIGTERM", "SIGFOO"]),
         r"^callbacks\.resume\.preempt_signals must be a list of signal names .* got \['SIGTERM', 'SIGFOO'\] "
         r"\(unknown: SIGFOO\)$"),
        (lambda: ResumeState(preempt_signals=None), r"^callbacks\.resume\.preempt_signals must be a list .* got None$"),
        (lambda: ResumeState(preempt_signals="SIGTERM"), r"^callbacks\.resume\.preempt_signals must be a list .* got 'SIGTERM'$"),
    ],
)
def test_every_callback_names_its_bad_argument_in_one_wording(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_resume_callback_accepts_no_signals():
    assert ResumeState(preempt_signals=[]).signals == []
