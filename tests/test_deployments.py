"""What the Prefect UI and `prefect deploy` see of the flow."""

import json

import yaml

from core.storage import REPO_ROOT


def test_every_prefect_yaml_entrypoint_loads_and_its_parameters_validate():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        file, function = deployment["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{REPO_ROOT / file}:{function}")
        assert flow.validate_parameters(deployment.get("parameters", {})) is not None


def test_the_ui_form_describes_every_configuration_key_with_its_default():
    from prefect.utilities.callables import parameter_schema

    from flows.quantize_evaluate import quantize_evaluate

    schema = parameter_schema(quantize_evaluate.fn).model_dump_for_openapi()
    assert "configuration.json" in schema["properties"]["config_path"]["description"]
    config = schema["definitions"]["QuantizeConfig"]
    assert config["properties"]["batch_size"]["description"].startswith("Images per calibration batch")
    assert config["properties"]["target_platform"]["default"] == "imx500"
    assert len(config["required"]) == 10
    assert json.dumps(schema)  # renders as JSON for the UI


def test_the_batch_deployment_runs_nightly_on_the_configs_folder():
    import asyncio

    from prefect.server.schemas.schedules import CronSchedule

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    batch = next(d for d in spec["deployments"] if d["name"] == "batch-quantize-nightly")
    [schedule] = batch["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert [d.hour for d in asyncio.run(cron.get_dates(2))] == [2, 2] and schedule["active"] is True
    assert (
        batch["parameters"]["config_dir"] == "configs"
        and (REPO_ROOT / "configs" / "digits" / "configuration.json").exists()
    )


def test_the_served_deployments_mirror_prefect_yaml():
    from deployments.serve import deployments

    served = {d.name: d for d in deployments()}
    spec = {d["name"]: d for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
    assert {name.removesuffix("-served") for name in served} == set(spec)
    assert (
        served["batch-quantize-nightly-served"].schedules[0].schedule.cron
        == spec["batch-quantize-nightly"]["schedules"][0]["cron"]
    )
