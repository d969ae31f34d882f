"""The batch flow: quantize and evaluate many models, one quantize-evaluate subflow each.

    python -m flows.batch_quantize configs/

A configuration that fails fails its own subflow; the others still run. The summary artifact
(`batch-quantize-summary`) lists every model with its status, Top-1 accuracies and sizes, and the
batch run ends Failed when any configuration failed, so a schedule's failures show in the UI.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # the command
    # A batch shows no progress bars, nor do the libraries (MCT's): set before anything imports tqdm, which
    # reads it once.
    os.environ["TQDM_DISABLE"] = "1"
    if not {"-h", "--help"} & set(sys.argv[1:]):  # Prefect's API starts now, while the imports below run
        from core.startup import start_command

        start_command()

import argparse
import json

import pandas as pd
from prefect import flow
from prefect.states import Completed, Failed

import core  # noqa: F401  (quietens TensorFlow before it is imported)
from core.batch.summary import outcome, outcome_of
from core.runners import RunnerConfig, add_runner_arguments, make_task_runner, runner_from_arguments
from core.startup import FINISHED_WITH_FAILURES, end_command, run_command, start_prefect_api_while_importing
from core.storage import results_storage_dir
from flows.quantize_evaluate import quantize_evaluate
from tasks.list_configurations import list_configurations_task
from tasks.quantize_configuration import quantize_configuration_task
from tasks.summarize_batch import summarize_batch_task


@flow(
    name="batch-quantize",
    description="Quantize and evaluate every configuration in a folder (or a list), one subflow each, with a summary "
    "across them.",
    result_storage=results_storage_dir(),
    validate_parameters=True,
)
def batch_quantize(
    config_dir: str | None = "configs",
    config_paths: list[str] | None = None,
    progress: bool = False,
    runner: RunnerConfig = RunnerConfig(),
):
    """Quantize and evaluate many models.

    Args:
        config_dir: A folder searched for `configuration.json` files (one sub-folder per model); relative to the
            working directory. Empty to use only config_paths.
        config_paths: Configuration files to run, in addition to those found in config_dir.
        progress: Show progress bars on the terminal.
        runner: 'threads' runs the configurations one after the other here; a Dask runner gives each worker one
            configuration at a time.
    """
    paths = list_configurations_task(config_dir=config_dir, config_paths=config_paths)
    if runner.distributed:
        with make_task_runner(runner) as remote:
            futures = [
                remote.submit(quantize_configuration_task, {"config_path": path, "progress": progress})
                for path in paths
            ]
            outcomes = [outcome_of(path, future) for path, future in zip(paths, futures, strict=True)]
    else:
        outcomes = [
            outcome(path, quantize_evaluate(config_path=path, progress=progress, return_state=True)) for path in paths
        ]
    summary = summarize_batch_task(outcomes=outcomes)
    if summary["failed"]:
        return Failed(
            message=f"{len(summary['failed'])} of {summary['count']} configurations failed: "
            f"{', '.join(summary['failed'])}",
            data=summary,
        )
    return Completed(message=f"all {summary['count']} configurations completed", data=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.batch_quantize",
        description="Run the quantize-and-evaluate flow for every configuration.json below a folder (and for any "
        "files given), "
        "each as its own subflow, and print a summary table. One failing configuration does not stop the others.",
        epilog="Exit status: 0 when every configuration completed, 1 when any failed, "
        f"{FINISHED_WITH_FAILURES} when all completed but some models in them failed (see each row's "
        "failed_models), 2 when no configuration could be found.",
    )
    parser.add_argument(
        "config_dir",
        nargs="?",
        default="configs",
        help="folder searched for configuration.json files (default: configs)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="CONFIGURATION_JSON",
        help="a configuration file to add; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_runner_arguments(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        start_prefect_api_while_importing("tensorflow")  # what the first step needs
        state = batch_quantize(
            config_dir=args.config_dir or None,
            config_paths=args.config,
            runner=runner_from_arguments(args),
            return_state=True,
        )
        summary = state.result(raise_on_failure=False)  # type: ignore[attr-defined]  # a State: not called async
        if isinstance(summary, Exception):
            raise summary
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print("\n" + pd.DataFrame(summary["rows"]).drop(columns=["error"]).to_string(index=False))
            for row in summary["rows"]:
                if row["error"]:
                    print(f"failed: {row['configuration']}: {row['error']}", file=sys.stderr)
        if summary["failed"]:
            return 1
        return FINISHED_WITH_FAILURES if summary["with_failed_models"] else 0

    return run_command(run)


if __name__ == "__main__":
    end_command(main())
