"""Settings from NEARLINE_* variables, and the errors that name the bad variable."""

from __future__ import annotations

import pytest

from nearline.foundation.settings import (
    SettingsError,
    format_duration,
    load_settings,
    parse_duration,
)


def test_defaults_are_the_embedded_profile_with_96h_retention() -> None:
    settings = load_settings()
    assert settings.embedded and settings.retention == 96 * 3600
    assert settings.window_names == ["1h", "24h", "96h"]


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARLINE_ACTIONS_OF_INTEREST", "click, apply")
    monkeypatch.setenv("NEARLINE_BROKER_URL", "kafka://a:9092,kafka://b:9092")
    monkeypatch.setenv("NEARLINE_WEB_PORT", "9000")
    settings = load_settings()
    assert settings.actions_of_interest == ["click", "apply"]
    assert settings.broker_url == ["kafka://a:9092", "kafka://b:9092"]
    assert settings.web_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("NEARLINE_WEB_PORT", "eighty", "NEARLINE_WEB_PORT"),
        ("NEARLINE_RETENTION", "forever", "NEARLINE_RETENTION"),
        ("NEARLINE_PROFILE", "staging", "NEARLINE_PROFILE"),
        ("NEARLINE_WINDOWS", "1h,200h", "NEARLINE_WINDOWS"),
        ("NEARLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "NEARLINE_KAFKA_SASL_USERNAME"),
        ("NEARLINE_ATTRIBUTE_STORE", "aerospike", "NEARLINE_AEROSPIKE_HOSTS"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_durations() -> None:
    assert parse_duration("96h") == 345600 and parse_duration("250ms") == 0.25
    assert parse_duration(30) == 30
    assert format_duration(345600) == "96h" and format_duration(14 * 86400) == "14d"
    with pytest.raises(ValueError):
        parse_duration("-5s")
