"""Whatever JSON object arrives, the configuration validator answers with its own error or a valid configuration."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import SDK_KEYS, QuantizeConfig, parse_config
from core.errors import ConfigError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(list(SDK_KEYS) + ["preprocessing", "seed", "target_platform", "bach_size", ""]) | st.text(
    max_size=10
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, json_values, max_size=12))
def test_random_objects_get_a_validation_error_or_a_configuration(data):
    try:
        assert isinstance(parse_config(data), QuantizeConfig)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_any_json_document_is_answered_with_a_validation_error(document):
    try:
        parse_config(document)
    except ConfigError as error:
        assert error.problems
