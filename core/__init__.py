"""Shared building blocks of the quantize-and-evaluate workflow.

The workflow's steps live in `tasks/`, one module per step; this package holds what
several steps share: the configuration model, preprocessing, image decoding, model
loading and running, atomic file writes and the content-based cache policy.
"""

import os

# TensorFlow is chatty at import; keep warnings and errors only unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The workflow runs offline: Prefect's server must not try to send telemetry home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from core.run_logging import quieten_input_errors  # noqa: E402  (after the environment above)

quieten_input_errors()
