"""Schemathesis fuzzes the running worker from its own OpenAPI document: no 5xx, ever."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from nearline.foundation import codec
from tests.integration.conftest import Deployment, Worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuzzed_worker(broker, tmp_path_factory) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    deployment = Deployment.isolated(
        broker,
        prefix="fuzz",
        tmp=tmp_path_factory.mktemp("fuzz"),
        max_candidates="50",
        log_level="INFO",
    )
    worker = deployment.worker().start().wait_ready()
    now = time.time()
    deployment.produce(
        [
            (
                f"m{i}".encode(),
                codec.dumps(
                    {
                        "event_id": f"e{i}",
                        "member_id": f"m{i % 5}",
                        "item_id": f"i{i}",
                        "action": "click",
                        "ts": now,
                    }
                ),
            )
            for i in range(20)
        ]
    )
    yield worker
    worker.stop()


def test_no_input_makes_the_api_fail(fuzzed_worker: Worker) -> None:
    api = schemathesis.openapi.from_url(f"{fuzzed_worker.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 5
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            response = case.call(timeout=10)
            calls += 1
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}"
            )
            case.validate_response(response)

        check()
    assert calls >= 100
