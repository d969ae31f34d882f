"""MCT's target platform capabilities (TPC): which description of the target MCT quantizes for, chosen to
match the device's compiler, and corrected where MCT 2.6.1's own is unusable.

- `imx500`: the TPC version must match the installed IMX500 converter (Sony's sdspconv): MCT maps converter
  3.14 to TPC 1.0, 3.16 to 4.0, 3.17 and 3.18 to 5.0. A newer converter than MCT knows takes the TPC of the
  newest one it knows; without the converter, MCT's default (1.0).
- `tflite`: MCT 2.6.1's description marks reshape, pooling, concatenation and a dozen other operators as
  quantization-preserving while leaving their activation quantization on, which MCT itself then refuses
  ("An OpQuantizationConfig can't have both enable_activation_quantization and quantization_preserving
  enabled") on any model that has one of them. The corrected description turns activation quantization
  off where the operator preserves its input's quantization, which is what the flag means.
- `qnnpack`: MCT's, unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.storage import REPO_ROOT

IMX500_CONVERTER_ENV = "IMX500_CONVERTER"
DEFAULT_TPC_VERSION = "1.0"
# MCT 2.6.1's get_target_platform_capabilities_sdsp table: IMX500 converter (sdspconv) version -> TPC version.
SDSP_TO_TPC = {(3, 14): "1.0", (3, 16): "4.0", (3, 17): "5.0", (3, 18): "5.0"}


class PlatformChoice(BaseModel):
    """The TPC a quantization used, and why: recorded in results.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_platform: str
    tpc_version: str
    imx500_converter_version: str | None = None
    reason: str


def find_imx500_converter() -> str | None:
    """IMX500_CONVERTER, else .venv-imx500/bin/imxconv-tf (`make imx500`), else imxconv-tf on PATH."""
    named = os.environ.get(IMX500_CONVERTER_ENV)
    if named:
        return named
    local = REPO_ROOT / ".venv-imx500" / "bin" / "imxconv-tf"
    return str(local) if local.is_file() else shutil.which("imxconv-tf")


def imx500_converter_version(converter: str | None) -> str | None:
    """The sdspconv version installed beside the converter (read from its environment's metadata)."""
    if not converter:
        return None
    found = shutil.which(converter) or converter
    environment = Path(found).resolve().parent.parent
    for info in sorted(environment.glob("lib/python*/site-packages/sdspconv-*.dist-info")):
        match = re.fullmatch(r"sdspconv-([\d.]+)\.dist-info", info.name)
        if match:
            return match.group(1)
    return None


def choose_platform(target_platform: str, converter: str | None = None) -> PlatformChoice:
    """The TPC version for `target_platform`; for imx500, the one that matches the installed converter."""
    if target_platform != "imx500":
        return PlatformChoice(
            target_platform=target_platform, tpc_version=DEFAULT_TPC_VERSION, reason="MCT's only version"
        )
    version = imx500_converter_version(converter if converter is not None else find_imx500_converter())
    if version is None:
        return PlatformChoice(
            target_platform=target_platform,
            tpc_version=DEFAULT_TPC_VERSION,
            reason="the IMX500 converter is not installed: MCT's default TPC",
        )
    parsed = tuple(int(part) for part in version.split(".")[:2])
    known = sorted(SDSP_TO_TPC)
    usable = [v for v in known if v <= parsed]
    if not usable:
        return PlatformChoice(
            target_platform=target_platform,
            tpc_version=DEFAULT_TPC_VERSION,
            imx500_converter_version=version,
            reason=f"converter {version} is older than any MCT knows: MCT's default TPC",
        )
    nearest = usable[-1]
    tpc = SDSP_TO_TPC[nearest]
    exact = nearest == parsed
    reason = (
        f"the TPC MCT pairs with IMX500 converter {version}"
        if exact
        else f"converter {version} is newer than MCT's table (up to {'.'.join(map(str, known[-1]))}): "
        f"the TPC of converter {'.'.join(map(str, nearest))}"
    )
    return PlatformChoice(
        target_platform=target_platform, tpc_version=tpc, imx500_converter_version=version, reason=reason
    )


def target_platform_capabilities(choice: PlatformChoice) -> Any:
    """MCT's TPC for the choice, corrected for `tflite` (see the module's docstring)."""
    import model_compression_toolkit as mct

    tpc = mct.get_target_platform_capabilities(tpc_version=choice.tpc_version, device_type=choice.target_platform)
    return _without_contradictions(tpc) if choice.target_platform == "tflite" else tpc


def _without_contradictions(tpc: Any) -> Any:
    """A copy whose quantization-preserving configurations do not also quantize their activations."""

    def corrected(config: Any) -> Any:
        if config.quantization_preserving and config.enable_activation_quantization:
            return config.clone_and_edit(enable_activation_quantization=False)
        return config

    def options(qc_options: Any) -> Any:
        if qc_options is None:
            return None
        return qc_options.model_copy(
            update={
                "base_config": corrected(qc_options.base_config),
                "quantization_configurations": tuple(corrected(c) for c in qc_options.quantization_configurations),
            }
        )

    operator_sets = tuple(s.model_copy(update={"qc_options": options(s.qc_options)}) for s in tpc.operator_set)
    return tpc.model_copy(update={"operator_set": operator_sets, "default_qco": options(tpc.default_qco)})
