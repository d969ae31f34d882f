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
