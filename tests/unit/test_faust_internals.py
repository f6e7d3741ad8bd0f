"""The Faust adapter refuses a Faust whose internals it was not written against."""

from __future__ import annotations

import faust
import pytest

from nearline.foundation.faust_internals import FaustVersionError, check_faust, supported_faust


def test_the_installed_faust_is_supported() -> None:
    check_faust()  # the suite runs against what setup.cfg pins
    assert str(supported_faust()), "read from the installed package's requirements"
    assert faust.__version__ in supported_faust()


@pytest.mark.parametrize("version", ["0.14.0", "0.16.0", "1.0.0"])
def test_another_faust_fails_with_what_to_install(version: str) -> None:
    with pytest.raises(FaustVersionError) as raised:
        check_faust(version)
    message = str(raised.value)
    assert version in message and f"pip install 'faust-streaming{supported_faust()}'" in message


def test_a_missing_private_name_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.transport.drivers.aiokafka import Producer

    monkeypatch.delattr(Producer, "_ensure_producer")
    with pytest.raises(FaustVersionError, match=r"lacks Producer\._ensure_producer"):
        check_faust()
