"""Where the work runs: local threads (the default), a Dask `LocalCluster` of N worker processes on
this machine, or an existing Dask scheduler. Dask workers must see the same paths as the flow: the
models, the images, `output_dir` and the cache (`QUANTIZE_CACHE_DIR`) on a shared filesystem."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator


class RunnerConfig(BaseModel):
    """The task runner of a flow run, picked by configuration."""

    model_config = ConfigDict(extra="forbid", title="Runner")

    kind: Literal["threads", "local_cluster", "address"] = Field(
        "threads",
        description=(
            "'threads': this process (default). 'local_cluster': a Dask LocalCluster on 127.0.0.1. "
            "'address': an existing Dask scheduler."
        ),
    )
    workers: StrictInt = Field(
        2,
        ge=1,
        le=256,
        description=(
            "Worker processes of the local cluster (one task at a time each); also how many repair trials run at "
            "once on the cluster, with kind 'address' too."
        ),
    )
    address: StrictStr | None = Field(
        None, description="The scheduler's address, e.g. tcp://10.0.0.5:8786, with kind 'address'."
    )
    evaluation_shards: StrictInt = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Split each model's evaluation images into this many shards, evaluated on the workers and merged exactly."
        ),
    )

    @model_validator(mode="after")
    def _address_with_its_kind(self) -> RunnerConfig:
        if (self.kind == "address") != (self.address is not None):
            raise ValueError("give 'address' (e.g. tcp://host:8786) exactly when kind is 'address'")
        return self

    @property
    def distributed(self) -> bool:
        return self.kind != "threads"


def make_task_runner(config: RunnerConfig, threads: int = 4):
    from prefect.task_runners import ThreadPoolTaskRunner

    if not config.distributed:
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_dask import DaskTaskRunner

    if config.kind == "address":
        return DaskTaskRunner(address=config.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        # Loopback only, no dashboard; one thread per worker so that each runs one model (or shard) at a time.
        cluster_kwargs={
            "n_workers": config.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )


def shards(count: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges splitting `count` items into at most `parts` nearly equal, non-empty shards."""
    parts = max(1, min(parts, count))
    bounds = [round(i * count / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)] if count else [(0, 0)]


def add_runner_arguments(parser) -> None:
    group = parser.add_argument_group("where the work runs (default: threads in this process)")
    group.add_argument(
        "--local-cluster", type=int, metavar="N", help="run on a Dask LocalCluster of N worker processes on 127.0.0.1"
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (paths must be shared)",
    )
    group.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="K",
        help="with Dask: split each model's evaluation images into K shards (default 1)",
    )


def runner_from_arguments(args) -> RunnerConfig:
    if args.local_cluster and args.scheduler:
        raise SystemExit("error: give --local-cluster or --scheduler, not both")
    try:
        if args.scheduler:
            return RunnerConfig(kind="address", address=args.scheduler, evaluation_shards=args.shards)
        if args.local_cluster is not None:
            return RunnerConfig(kind="local_cluster", workers=args.local_cluster, evaluation_shards=args.shards)
        return RunnerConfig(evaluation_shards=args.shards)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'runner'}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"error: {problems} (--local-cluster N takes N >= 1, --shards K takes K >= 1)") from None
