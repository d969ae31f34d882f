"""Shared building blocks of the quantize-and-evaluate workflow.

The workflow's steps are named in `tasks/` (one `@task` each); their logic lives here, one package per
capability (data, build, evaluate, targets, analysis, repair, results, batch), each with its records. The modules
at this level are the plumbing they share: the configuration, the cache policy, atomic files, locks, logging,
runners and the command's start and exit.
"""

import os

# TensorFlow is chatty at import; keep warnings and errors only unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The workflow runs offline: Prefect's server must not try to send telemetry home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from core.run_logging import quieten_input_errors  # noqa: E402  (after the environment above)

quieten_input_errors()
