"""Training health: collapse signals every N steps, logged as ``health/*``, with a console
warning that names the symptom and its likely fix, and optionally a clean stop.

It reads only the method's ``step_signals`` (``SSLMethod.STEP_SIGNALS``: tensors the step
computed anyway), so it runs no forward of its own, and nothing leaves the device except
on the steps it checks. The values are this process's batch (rank zero's are logged);
under several processes any process seeing a collapse stops them all.

The signals (``ssl_zoo.eval.health``) and what they mean are in docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch

from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.eval.health import embedding_std, kl_to_uniform, mean_entropy, prototype_usage, rankme
from ssl_zoo.methods.base import SSLMethod

log = logging.getLogger("ssl_zoo.health")


class HealthMonitor(L.Callback):
    """Args:
    every_n_steps: check every N optimizer steps (>= 1). A check costs an SVD of the
        (2B, D) feature matrix and one device-to-host copy of a few numbers.
    stop_on_collapse: end the run (``trainer.should_stop``) at the first collapse seen;
        summary.json then says so (``stop_reason``).
    uniform_entropy: uniform collapse when the mean teacher entropy is at least this
        fraction of ln K (the teacher's targets are nearly flat).
    sharp_kl: sharp collapse when KL(mean teacher || uniform) is at least this fraction of
        ln K (one prototype takes the batch; sharp but diverse targets of N samples stay
        near ln K - ln N).
    min_std_ratio, min_rankme: representation collapse when the embedding std is below
        this fraction of the healthy 1/sqrt(D), or the effective rank below this.
    """

    def __init__(
        self,
        every_n_steps: int = 25,
        stop_on_collapse: bool = False,
        uniform_entropy: float = 0.995,
        sharp_kl: float = 0.9,
        min_std_ratio: float = 0.02,
        min_rankme: float = 1.2,
        patience: int = 3,
    ) -> None:
        check_arg("health", "every_n_steps", every_n_steps, lambda v: isinstance(v, int) and v >= 1, "an int >= 1",
                  hint="to turn the monitor off set callbacks.health=null")
        for key, value in (("uniform_entropy", uniform_entropy), ("sharp_kl", sharp_kl)):
            check_arg("health", key, value, lambda v: 0 < v <= 1, "in (0, 1] (a fraction of ln K)")
        check_arg("health", "min_std_ratio", min_std_ratio, lambda v: v >= 0, ">= 0")
        check_arg("health", "min_rankme", min_rankme, lambda v: v >= 1, ">= 1")
        check_arg("health", "patience", patience, lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
        # A symptom counts after `patience` checks in a row: a fresh DINO teacher is nearly
        # flat for its first few dozen steps, which is not a collapse.
        self.patience = patience
        self._streak: dict[str, int] = {}
        self.every_n_steps = every_n_steps
        self.stop_on_collapse = stop_on_collapse
        self.thresholds = {"uniform_entropy": uniform_entropy, "sharp_kl": sharp_kl,
                           "min_std_ratio": min_std_ratio, "min_rankme": min_rankme}
        self.last: dict[str, float] = {}  # values of the latest check, without the prefix
        self.symptoms: dict[str, dict] = {}  # symptom -> {"step", "message"} of its first sighting
        self.stop_reason: str | None = None
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # Under gradient accumulation several batches end at the same optimizer step.
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        if not isinstance(pl_module, SSLMethod) or "student_features" not in pl_module.step_signals:
            return  # a method outside the SSLMethod contract
        signals = pl_module.step_signals
        values, dims = measure(signals)
        self.last = values
        for logger in trainer.loggers:
            logger.log_metrics({f"health/{name}": value for name, value in values.items()}, step=step)
        seen = diagnose(values, dims, step, **self.thresholds)
        self._streak = {name: self._streak.get(name, 0) + 1 for name in seen}
        found = {name: message for name, message in seen.items() if self._streak[name] >= self.patience}
        for name, message in found.items():
            if name not in self.symptoms:  # once per symptom: a collapse rarely heals itself
                self.symptoms[name] = {"step": step, "message": message}
                if trainer.is_global_zero:
                    log.warning("health: %s", message)
        if self.stop_on_collapse and trainer.strategy.reduce_boolean_decision(bool(found), all=False):
            name, message = next(iter(found.items()), ("collapse", "a collapse seen by another process"))
            self.stop_reason = f"stopped at step {step} (callbacks.health.stop_on_collapse=true): {message}"
            trainer.should_stop = True
            if trainer.is_global_zero:  # the symptom's warning above has the details
                log.warning("health: stopping the run at step %d on %s (callbacks.health.stop_on_collapse=true)",
                            step, name.replace("_", " "))

    def summary(self) -> dict[str, Any]:
        return {"stop_reason": self.stop_reason, "health_symptoms": dict(self.symptoms)}

    def state_dict(self) -> dict:
        return {"symptoms": self.symptoms}

    def load_state_dict(self, state_dict: dict) -> None:
        self.symptoms = dict(state_dict.get("symptoms", {}))  # a resumed run does not warn twice


def measure(signals: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, int]]:
    """The ``health/*`` values of one step's signals (one device-to-host copy), and the
    sizes they are judged against: N rows, D feature dimensions, K prototypes."""
    features = signals["student_features"]
    dims = {"N": features.shape[0], "D": features.shape[1]}
    tensors = {"embedding_std": embedding_std(features), "rankme": rankme(features)}
    probs = signals.get("teacher_probs")
    if probs is not None:
        dims["K"] = probs.shape[1]
        tensors.update(teacher_entropy=mean_entropy(probs), kl_to_uniform=kl_to_uniform(probs),
                       prototype_usage=prototype_usage(probs))
    if signals.get("center") is not None:
        tensors["center_norm"] = signals["center"].float().norm()
    numbers = torch.stack(list(tensors.values())).cpu().tolist()
    values = dict(zip(tensors, numbers, strict=True))
    # Relative to the healthy isotropic value 1/sqrt(D): comparable across backbones.
    values["embedding_std_ratio"] = values["embedding_std"] * math.sqrt(dims["D"])
    return values, dims


def diagnose(
    values: dict[str, float],
    dims: dict[str, int],
    step: int,
    uniform_entropy: float = 0.995,
    sharp_kl: float = 0.9,
    min_std_ratio: float = 0.02,
    min_rankme: float = 1.2,
) -> dict[str, str]:
    """Symptom name -> message (what is seen, what it means, the likely fix) for each
    collapse the values show; empty when healthy."""
    found = {}
    if "teacher_entropy" in values:
        k = dims["K"]
        ln_k = math.log(k)
        entropy, kl = values["teacher_entropy"], values["kl_to_uniform"]
        if entropy >= uniform_entropy * ln_k:
            found["uniform_collapse"] = (
                f"uniform collapse at step {step}: the teacher entropy {entropy:.3f} is "
                f"{entropy / ln_k:.0%} of ln K = {ln_k:.3f} (K={k}): the teacher's targets are "
                "nearly flat and the DINO loss sits near ln K. Likely fix: a sharper teacher, "
                "lower method.teacher_temp (and method.warmup_teacher_temp); check the centering "
                "(method.center_momentum) is not outweighing the sharpening"
            )
        elif kl >= sharp_kl * ln_k:
            used = round(values["prototype_usage"] * k)
            found["sharp_collapse"] = (
                f"sharp collapse at step {step}: one prototype takes the batch ({used} of K={k} "
                f"prototypes used, KL to uniform {kl:.3f} of at most ln K = {ln_k:.3f}). Likely "
                "fix: centering off or too weak (method.teacher_targets=centering, "
                "method.center_momentum < 1), teacher temperature too low (raise "
                "method.teacher_temp), or lr too high (lower optim.schedule.base_lr)"
            )
    ratio, rank = values["embedding_std_ratio"], values["rankme"]
    if ratio < min_std_ratio or rank < min_rankme:
        d = dims["D"]
        found["representation_collapse"] = (
            f"representation collapse at step {step}: the backbone maps every image to about "
            f"the same feature (embedding std {values['embedding_std']:.2e} = {ratio:.3f} x the "
            f"healthy 1/sqrt(D) = {1 / math.sqrt(d):.3f}; RankMe {rank:.2f} of at most "
            f"{min(dims['N'], d)}). Likely fix: lower optim.schedule.base_lr or raise "
            "optim.schedule.warmup_epochs; for the DINO family see the teacher signals (centering, "
            "teacher temperature), for BYOL the teacher momentum"
        )
    return found
