"""The devices a model is made for, one object each: which models a device takes, which builders its repair uses,
whether a model deploys there and why not, how the recommendation orders what it takes, and what its compiler's
verdict depends on. No other module compares device names: it asks `target_for(config.target_device)`.

- `NoDevice` (no `target_device`): any integer model; the repair tries MCT and the converter in turn.
- `Imx500`: the MCT PTQ model, converted by Sony's IMX500 converter and fitting the sensor's memory.
- `EthosUTarget` (one per accelerator): a full-integer model that Vela compiled; the most operators on the NPU
  first.

The verdicts read the compilers' reports as results.json holds them (`Imx500Report.as_results()`,
`EthosUReport.as_results()`), so that a record and a results row are judged by the same code.

A model's accuracy drop is held against the budget in one place too: `within_budget`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from core.build.variants import FULL_INTEGER_VARIANTS, IMX500_VARIANT, EthosU, TargetDevice, model_id, one_of

Builder = Literal["mct", "converter"]
Compiler = Literal["imx500_converter", "vela"]

# A drop equal to the budget is within it; the slack absorbs float rounding of accuracies computed on the same images.
BUDGET_SLACK = 1e-9


def within_budget(drop: float, budget: float) -> bool:
    """Whether an accuracy drop (float model's minus the model's) stays within the budget (`max_accuracy_drop`)."""
    return drop <= budget + BUDGET_SLACK


@dataclass(frozen=True)
class Target:
    """No particular device: every integer TFLite model deploys."""

    device: TargetDevice | None = None
    # The builders the repair's recipes use, in the order they take turns.
    builders: tuple[Builder, ...] = ("mct", "converter")
    # The compiler whose verdict a repaired model needs (None: none does).
    compiler: Compiler | None = None
    # The recommendation prefers, among the models within budget, the one with the most operators on the NPU.
    npu_first: bool = False

    def configuration_problem(self, *, target_platform: str, variants: Sequence[str] | None) -> str | None:
        """What in a configuration contradicts this target (nothing for no device)."""
        return None

    def takes(self, model_name: str, float_tflite: str) -> bool:
        """Whether the device takes the model of that name at all (before its compiler has a say)."""
        return True

    def problem(self, row: Mapping[str, Any]) -> str | None:
        """Why the device cannot take a results row (a model with its compilers' reports), or None."""
        return None

    def judged(self, row: Mapping[str, Any]) -> bool:
        """Whether this device's compiler ran on the row's model: its verdict says more than "not for this device"."""
        return False

    def refusal(self, row: Mapping[str, Any]) -> str | None:
        """Why this device's compiler refused the row's model for what its graph is (an operator it has no kernel
        for, a layer past its limits), not for its size: no repair recipe changes that. None otherwise."""
        return None


@dataclass(frozen=True)
class Imx500(Target):
    device: TargetDevice | None = "imx500"
    builders: tuple[Builder, ...] = ("mct",)
    compiler: Compiler | None = "imx500_converter"

    def configuration_problem(self, *, target_platform: str, variants: Sequence[str] | None) -> str | None:
        if target_platform != "imx500":
            return (
                f"target_device 'imx500' needs target_platform 'imx500', got {target_platform!r}: the IMX500 "
                "converter takes models quantized for it"
            )
        return None

    def takes(self, model_name: str, float_tflite: str) -> bool:
        return model_name == model_id(IMX500_VARIANT, float_tflite)

    def problem(self, row: Mapping[str, Any]) -> str | None:
        return imx500_problem(row.get("imx500"))

    def judged(self, row: Mapping[str, Any]) -> bool:
        return bool(row.get("imx500"))

    def refusal(self, row: Mapping[str, Any]) -> str | None:
        return self.problem(row) if imx500_verdict(row.get("imx500")) == "refused" else None


@dataclass(frozen=True)
class EthosUTarget(Target):
    device: TargetDevice | None = "ethos-u55-128"
    builders: tuple[Builder, ...] = ("converter",)
    compiler: Compiler | None = "vela"
    npu_first: bool = True

    def configuration_problem(self, *, target_platform: str, variants: Sequence[str] | None) -> str | None:
        if variants is not None and not set(FULL_INTEGER_VARIANTS) & set(variants):
            choices = one_of(FULL_INTEGER_VARIANTS, quote=True)
            return f"target_device {self.device!r} needs a full-integer model: add {choices} to variants"
        return None

    def problem(self, row: Mapping[str, Any]) -> str | None:
        ethos_u = row.get("ethos_u") or {}
        return None if ethos_u.get("compiled") else ethos_u.get("reason") or "not compiled for Ethos-U"

    def judged(self, row: Mapping[str, Any]) -> bool:
        return bool((row.get("ethos_u") or {}).get("accelerator"))  # a model Vela declined has none

    def refusal(self, row: Mapping[str, Any]) -> str | None:
        return self.problem(row) if self.judged(row) else None


TARGETS: dict[TargetDevice | None, Target] = {
    None: Target(),
    "imx500": Imx500(),
    **{accelerator: EthosUTarget(device=accelerator) for accelerator in get_args(EthosU)},
}


def target_for(device: str | None) -> Target:
    """The target a configuration's `target_device` names (None: no particular device)."""
    try:
        return TARGETS[device]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown target_device {device!r}: expected one of {', '.join(map(str, TARGETS))}") from None


def ethos_u_accelerator_of(device: str | None) -> EthosU | None:
    """The Ethos-U accelerator a target device is, or None for any other target."""
    target = target_for(device)
    return target.device if isinstance(target, EthosUTarget) else None  # type: ignore[return-value]


def imx500_problem(report: Mapping[str, Any] | None) -> str | None:
    """Why the IMX500 does not take the model Sony's converter reported on, or None when it fits. A report that is
    not compiled says why in its reason: the converter refused it, crashed or ran out of time, or it was skipped."""
    if not report:
        return "not converted for the IMX500 (the converter takes the MCT PTQ model only)"
    if report.get("skipped") or (not report.get("compiled") and report.get("fits") is not False):
        return str(report.get("reason") or "not compiled by the IMX500 converter")
    if report.get("fits"):
        return None
    return f"does not fit the IMX500 ({report.get('utilization_percent') or 0:.0f}% of its memory)"


def imx500_verdict(report: Mapping[str, Any] | None) -> str | None:
    """The IMX500 converter's verdict in a word, for a table's imx500_fits column: yes, no (its memory), refused (it
    did not compile the model: refused, crashed or timed out), or none (no report, or the converter skipped)."""
    if not report or report.get("skipped"):
        return None
    if report.get("fits") is False:
        return "no"
    if not report.get("compiled"):
        return "refused"
    return "yes" if report.get("fits") else "no"
