"""The records of targets/ (see core/records.py for what a record is)."""

from __future__ import annotations

from core.build.variants import FULL_INTEGER_VARIANTS, IMX500_VARIANT, model_id, one_of
from core.records import Record


class Imx500Report(Record):
    """What Sony's IMX500 converter said of the MCT PTQ model: skipped (and why), or its memory and fit."""

    compiled: bool
    skipped: bool
    reason: str | None = None
    memory_usage_bytes: int | None = None
    memory_available_bytes: int | None = None
    runtime_memory_bytes: int | None = None
    model_memory_bytes: int | None = None
    utilization_percent: float | None = None
    fits: bool | None = None
    folder: str | None = None
    memory_report: str | None = None
    converter: str | None = None
    packer_out: str | None = None
    dnn_params: str | None = None
    input_scale: float | None = None
    input_format: str | None = None
    input_bits: int | None = None

    def as_results(self) -> dict:
        return self.model_dump(exclude_none=True)


class EthosUReport(Record):
    """What Vela said of a full-integer model, or why it was not compiled."""

    compiled: bool
    reason: str | None = None
    accelerator: str | None = None
    vela_model: str | None = None
    vela_version: str | None = None
    npu_operators: int | None = None
    cpu_operators: int | None = None
    npu_share: float | None = None
    sram_kib: float | None = None
    off_chip_flash_kib: float | None = None
    cycles_total: int | None = None
    cycles_npu: int | None = None
    inferences_per_second: float | None = None
    system_config: str | None = None

    @classmethod
    def declined(cls, variant: str | None) -> EthosUReport:
        """Vela maps only integer operators to the NPU: a model that is not full-integer is not compiled."""
        return cls(
            compiled=False,
            reason=f"not for Ethos-U: needs a full-integer model (variant {variant or 'keras'} is not; "
            f"build {one_of(FULL_INTEGER_VARIANTS)})",
        )

    @classmethod
    def failed(cls, accelerator: str, reason: str) -> EthosUReport:
        """Vela's verdict against a full-integer model: it refused, crashed or ran out of time (`reason` says which)."""
        return cls(compiled=False, accelerator=accelerator, reason=reason)

    def as_results(self) -> dict:
        data = self.model_dump(exclude_none=True)
        if self.compiled:  # NaN from Vela when nothing runs on the NPU: shown as null
            data["inferences_per_second"] = self.inferences_per_second
        return data


class HardwareReports(Record):
    """The device compilers' verdicts: the IMX500 converter's (when it ran) and Vela's, by model name."""

    imx500: Imx500Report | None = None
    ethos_u: dict[str, EthosUReport] = {}

    def reports_of(self, model_name: str, float_tflite: str) -> dict[str, dict | None]:
        """One model's reports as its results row holds them (the IMX500 converter's is the MCT PTQ model's): what
        a target's `problem` reads."""
        imx500 = self.imx500 if model_name == model_id(IMX500_VARIANT, float_tflite) else None
        ethos_u = self.ethos_u.get(model_name)
        return {
            "imx500": imx500.as_results() if imx500 else None,
            "ethos_u": ethos_u.as_results() if ethos_u else None,
        }
