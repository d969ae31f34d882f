"""How the run's logs show: the results table the command prints as its outcome is not shown again among the logs
on its terminal, and still reaches the Prefect API (the UI's logs)."""

import json
import subprocess
import sys
import textwrap

from core.storage import REPO_ROOT

# In a process of its own: Prefect's logging as a command has it (pytest's capture changes the root's handlers).
SCRIPT = textwrap.dedent(
    """
    import json, logging
    from prefect import flow  # sets up Prefect's logging
    from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler
    from core.run_logging import PRINTED_AS_THE_OUTCOME, WithoutTheOutcome, print_the_outcome_once

    logger = logging.getLogger("prefect.task_runs")

    def record(**extra):
        message = "Results written to x\\n<table>"
        return logger.makeRecord(logger.name, logging.INFO, "x", 1, message, (), None, extra=extra)

    console = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    api = [h for h in logger.handlers if isinstance(h, APILogHandler)]
    print_the_outcome_once()
    print_the_outcome_once()  # a second time adds nothing
    print(json.dumps({
        "handlers": [len(console), len(api)],
        "filters": [sum(isinstance(f, WithoutTheOutcome) for f in h.filters) for h in console],
        "outcome_on_console": [bool(h.filter(record(**PRINTED_AS_THE_OUTCOME))) for h in console],
        "outcome_to_api": [bool(h.filter(record(**PRINTED_AS_THE_OUTCOME))) for h in api],
        "other_logs": [bool(h.filter(record())) for h in console + api],
    }))
    """
)


def test_the_outcome_reaches_the_api_and_not_the_terminal_and_other_logs_reach_both():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["handlers"] == [1, 1]
    assert seen["filters"] == [1]
    assert seen["outcome_on_console"] == [False]
    assert seen["outcome_to_api"] == [True]
    assert seen["other_logs"] == [True, True]
