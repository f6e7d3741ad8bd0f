"""The HTTP layer alone: auth, limits, error bodies, forwarding to the owner, the schemas.

The worker's services are stood in for by fakes here (``FakeFeatures`` for the online
store's read, ``FakeStatus`` for the probes' view), so the web app is tested without a
broker; the ranking is the real :class:`Recommender`. The integration tests cover the same
API over a socket, with real workers that own partitions and forward to each other.
Load shedding is tested in ``test_shedding.py``.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

from nearline.agents.erasures import Erasure
from nearline.app.compose import state_policy
from nearline.app.console.timeline import IngestTimeline
from nearline.app.lag import PartitionLag
from nearline.app.openapi import FeaturesResponse, Ranking, SystemView
from nearline.app.recommend import RecommendationResponse, Recommender
from nearline.app.web import FORWARDED_HEADER, WebServices
from nearline.app.web_app import create_web_app
from nearline.attribute_store import CachedAttributeStore, StoreHealth
from nearline.foundation.limits import MAX_BODY_BYTES, MAX_ID_LENGTH
from nearline.foundation.metrics import Metrics
from nearline.foundation.settings import Settings, load_settings
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from nearline.tables.member_state import MemberState
from nearline.tables.online_store import NotOwned, Restoring
from tests.unit.attribute_store.conftest import RecordingStore, item

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package behind its TestClient; the project depends
    # on httpx, with which the TestClient still works as before.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

HERE = "http://worker-a:8080"
OWNER = "http://worker-b:8080"
TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


class FakeFeatures:
    """The online store's read: every member is known here except those ``elsewhere``."""

    def __init__(
        self, settings: Settings, elsewhere: dict[str, NotOwned | Restoring] | None = None
    ) -> None:
        self.policy = state_policy(settings)
        self.elsewhere = elsewhere or {}
        self.asked: list[tuple[str, float]] = []

    async def features(self, member_id: str, as_of: float) -> dict[str, Any]:
        self.asked.append((member_id, as_of))
        if member_id in self.elsewhere:
            raise self.elsewhere[member_id]
        return MemberState().features(member_id, as_of, self.policy)


class FakeStatus:
    """A ready worker owning partitions 0 and 1 of 4; worker-b owns the others."""

    partitions = 4
    attribute_health = StoreHealth(ok=True, backend="embedded", detail="")

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        return True, "ok"

    def consumer_lag(self) -> list[PartitionLag]:
        return [PartitionLag("member-actions", 0, 3, 0.0)]

    def ingest_behind(self) -> bool:
        return False

    def owned_partitions(self) -> list[int]:
        return [0, 1]

    def owner_url(self, partition: int) -> str | None:
        return OWNER if partition >= 2 else None


class ListLog:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def log(self, member_id: str, record: dict[str, Any]) -> None:
        self.records.append(record)


class ListErasures:
    """Erasure requests, recorded in a list; ``fail`` makes the broker refuse them."""

    def __init__(self, fail: bool = False) -> None:
        self.requested: list[Erasure] = []
        self.fail = fail

    async def request(self, member_id: str, requested_by: str) -> Erasure:
        if self.fail:
            raise ConnectionError("broker down")
        erasure = Erasure.new(member_id, requested_by)
        self.requested.append(erasure)
        return erasure


def web_app(
    *,
    erasures: ListErasures | None = None,
    elsewhere: dict[str, NotOwned | Restoring] | None = None,
    http: httpx.AsyncClient | None = None,
    web_url: str = HERE,
    **settings: Any,
) -> Starlette:
    config = load_settings(
        **{"advertised_url": web_url, "max_candidates": 5, "embedding_dim": 4, **settings}
    )
    attributes = CachedAttributeStore(RecordingStore(), maxsize=100, ttl=60.0)
    asyncio.run(attributes.put_many([item("a", category="design", company="acme")]))
    models = ModelRegistry(None, Vectorizer(VectorizerConfig(embedding_dim=4)))
    return create_web_app(
        WebServices(
            features=FakeFeatures(config, elsewhere),
            status=FakeStatus(),
            recommender=Recommender(models, attributes, ListLog()),
            settings=config,
            metrics=Metrics(),
            timeline=IngestTimeline(),
            models=models,
            attributes=attributes,
            http=http or httpx.AsyncClient(),
            erasures=erasures or ListErasures(),
        )
    )


@pytest.fixture
def client() -> TestClient:
    return TestClient(web_app())


def ask(client: TestClient, body: Any, **headers: str) -> httpx.Response:
    return client.post("/v1/recommendations", json=body, headers=headers)


# -- auth ------------------------------------------------------------------------------


def test_with_a_token_every_v1_route_needs_it_and_probes_stay_open() -> None:
    client = TestClient(web_app(api_token=TOKEN))
    for path in ("/v1/members/m/features", "/v1/console/system"):
        for headers in ({}, {"authorization": "Bearer wrong"}):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert "Authorization: Bearer" in refused.json()["error"]
            assert refused.headers["www-authenticate"] == "Bearer"
        assert client.get(path, headers=AUTH).status_code == 200
    assert ask(client, {"member_id": "m", "candidates": ["a"]}).status_code == 401
    assert ask(client, {"member_id": "m", "candidates": ["a"]}, **AUTH).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/console/config.json"):
        assert client.get(path).status_code == 200, path


def test_the_bearer_scheme_is_matched_in_any_case_and_the_token_exactly() -> None:
    client = TestClient(web_app(api_token=TOKEN))
    path = "/v1/members/m/features"
    for scheme in ("bearer", "BEARER", "bEaReR", "Bearer  "):
        accepted = client.get(path, headers={"authorization": f"{scheme} {TOKEN}"})
        assert accepted.status_code == 200, scheme
    for given in (TOKEN, f"Basic {TOKEN}", f"Bearer{TOKEN}", f"bearer {TOKEN.upper()}"):
        assert client.get(path, headers={"authorization": given}).status_code == 401, given
    answer = ask(client, {"member_id": "m", "candidates": ["a"]}, authorization=f"bearer {TOKEN}")
    assert answer.status_code == 200


# -- limits: each broken rule has its status and says what is wrong -----------------------


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "not JSON"),
        (b'{"member_id": "m", "candidates": ["' + b"a" * MAX_BODY_BYTES + b'"]}', 413, "limit"),
        (b'{"member_id": "m", "candidates": ["1","2","3","4","5","6"]}', 422, "limit of 5"),
        (b'{"member_id": "m", "candidates": ["a"], "k": 6}', 422, "k must be at most 5"),
        (b'{"member_id": "m", "candidates": ["a"], "k": 0}', 422, "k:"),
        (b'{"member_id": "m"}', 422, "candidates: Field required"),
        (b'{"member_id": "m", "candidates": ["a"], "extra": 1}', 422, "extra"),
        (b'{"member_id": "m", "candidates": ["a"], "features_as_of": -1}', 422, "features_as_of"),
        # JSON booleans and strings are not numbers, whatever Python makes of them.
        (b'{"member_id": "m", "candidates": ["a"], "features_as_of": false}', 422, "as_of:"),
        (b'{"member_id": "m", "candidates": ["a"], "features_as_of": true}', 422, "as_of:"),
        (b'{"member_id": "m", "candidates": ["a"], "features_as_of": "1"}', 422, "as_of:"),
        (b'{"member_id": "m", "candidates": ["a"], "k": true}', 422, "k: Value error, must be"),
        (b'{"member_id": "m", "candidates": ["a"], "k": "1"}', 422, "k: Value error, must be"),
        (b'{"member_id": "m", "candidates": ["a"], "k": 1.5}', 422, "fractional part"),
        (
            b'{"member_id": "' + b"m" * (MAX_ID_LENGTH + 1) + b'", "candidates": ["a"]}',
            422,
            "member_id",
        ),
        (
            b'{"member_id": "m", "candidates": ["' + b"i" * (MAX_ID_LENGTH + 1) + b'"]}',
            422,
            "candidates.0",
        ),
    ],
)
def test_a_bad_recommendation_request(
    client: TestClient, body: bytes, status: int, words: str
) -> None:
    answer = client.post("/v1/recommendations", content=body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


def test_whole_numbers_are_numbers_where_numbers_are_asked(client: TestClient) -> None:
    for k in (1, 1.0):  # JSON Schema's integer: 1.0 is one (schemathesis sends such)
        body = {"member_id": "m", "candidates": ["a", "b"], "k": k, "features_as_of": 1_800_000_000}
        answer = ask(client, body)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 1


def test_a_body_declared_too_large_is_refused_before_it_is_read(client: TestClient) -> None:
    answer = client.post(
        "/v1/recommendations",
        content=b"{}",
        headers={"content-length": str(MAX_BODY_BYTES + 1)},
    )
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (f"/v1/members/{'m' * (MAX_ID_LENGTH + 1)}/features", "member_id"),
        ("/v1/members/m/features?as_of=-1", "as_of"),
        ("/v1/members/m/features?as_of=yesterday", "as_of"),
        ("/v1/members/m/features?as_of=nan", "as_of"),
        ("/v1/members/m/features?as_of=inf", "as_of"),
        (f"/v1/console/members/{'m' * (MAX_ID_LENGTH + 1)}/ranking", "member_id"),
        ("/v1/console/members/m/ranking?candidates=1,2,3,4,5,6", "limit of 5"),
        (f"/v1/console/members/m/ranking?candidates={'i' * (MAX_ID_LENGTH + 1)}", "candidates"),
    ],
)
def test_a_bad_path_or_query_is_a_422(client: TestClient, path: str, words: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 422, answer.text
    assert words in answer.json()["error"]


def test_the_longest_id_is_served(client: TestClient) -> None:
    member = "m" * MAX_ID_LENGTH
    assert client.get(f"/v1/members/{member}/features").json()["member_id"] == member
    assert ask(client, {"member_id": member, "candidates": ["i" * MAX_ID_LENGTH]}).is_success


# -- errors of routing -----------------------------------------------------------------


def test_unknown_routes_and_wrong_methods_answer_in_the_error_body(client: TestClient) -> None:
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no route for GET /v1/nothing"}
    wrong = client.get("/v1/recommendations")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json() == {"error": "GET is not allowed on /v1/recommendations"}


# -- answers match the documented schemas ------------------------------------------------


def test_answers_match_their_models(client: TestClient) -> None:
    features = client.get("/v1/members/m/features?as_of=1764400000")
    assert features.status_code == 200
    assert FeaturesResponse.model_validate(features.json()).as_of == 1764400000
    ranked = ask(client, {"member_id": "m", "candidates": ["a", "b"], "k": 1})
    RecommendationResponse.model_validate(ranked.json())
    ranking = client.get("/v1/console/members/m/ranking?candidates=a,b").json()
    assert Ranking.model_validate(ranking).items[0].item_id in ("a", "b")
    assert {"item_id": "a", "category": "design", "company": "acme"}.items() <= next(
        i for i in ranking["items"] if i["item_id"] == "a"
    ).items()
    system = client.get("/v1/console/system").json()
    view = SystemView.model_validate(system)
    assert [p.owner for p in view.partitions] == [HERE, HERE, OWNER, OWNER]
    assert view.lag[0].lag == 3 and view.ready and system["series"]["t"][0] % 1 == 0
    ready = client.get("/readyz").json()
    assert ready["partitions"] == [0, 1] and ready["attribute_store"]["ok"]


def test_the_document_states_the_deployments_limits(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    request = document["components"]["schemas"]["RecommendationRequest"]["properties"]
    assert request["candidates"]["maxItems"] == 5
    assert request["candidates"]["items"]["maxLength"] == MAX_ID_LENGTH
    assert {"maximum": 5, "minimum": 1, "type": "integer"} in request["k"]["anyOf"]
    ranking = document["paths"]["/v1/console/members/{member_id}/ranking"]["get"]
    candidates = next(p for p in ranking["parameters"] if p["name"] == "candidates")
    assert candidates["schema"]["pattern"].endswith("{0,4}$")
    for path in document["paths"].values():
        for operation in path.values():
            for answer in operation["responses"].values():
                for content in answer.get("content", {}).values():
                    ref = content["schema"]["$ref"].removeprefix("#/components/schemas/")
                    assert ref in document["components"]["schemas"]


# -- forwarding to the worker owning the member ----------------------------------------


def test_a_member_owned_elsewhere_is_answered_by_its_owner() -> None:
    owner_app = web_app(web_url=OWNER)
    owner = httpx.AsyncClient(transport=httpx.ASGITransport(app=owner_app))
    client = TestClient(web_app(elsewhere={"m": NotOwned(2, OWNER)}, http=owner))
    features = client.get("/v1/members/m/features?as_of=1764400000")
    assert features.status_code == 200 and features.json()["as_of"] == 1764400000
    asked: FakeFeatures = owner_app.state.features
    assert asked.asked == [("m", 1764400000.0)]
    # The owner's own answer is relayed, errors included.
    assert client.get("/v1/members/m/features?as_of=-1").status_code == 422
    ranked = ask(client, {"member_id": "m", "candidates": ["a", "b"]})
    assert ranked.status_code == 200 and len(ranked.json()["items"]) == 2
    ranking = client.get("/v1/console/members/m/ranking?candidates=a")
    assert ranking.status_code == 200 and ranking.json()["items"][0]["item_id"] == "a"


def test_the_token_goes_along_to_the_owner() -> None:
    owner = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web_app(web_url=OWNER, api_token=TOKEN))
    )
    client = TestClient(web_app(elsewhere={"m": NotOwned(2, OWNER)}, http=owner, api_token=TOKEN))
    assert client.get("/v1/members/m/features", headers=AUTH).status_code == 200


def test_a_member_whose_partition_is_being_restored_gets_a_503_not_a_partial_answer() -> None:
    client = TestClient(web_app(elsewhere={"m": Restoring(3)}))
    for response in (
        client.get("/v1/members/m/features"),
        ask(client, {"member_id": "m", "candidates": ["a"]}),
        client.get("/v1/console/members/m/ranking?candidates=a"),
    ):
        assert response.status_code == 503, response.text
        assert "partition 3 is being restored" in response.json()["error"]
        assert response.headers["retry-after"]


@pytest.mark.parametrize("owner_url", [None, HERE])
def test_without_an_owner_elsewhere_the_partition_is_being_rebalanced(
    owner_url: str | None,
) -> None:
    client = TestClient(web_app(elsewhere={"m": NotOwned(2, owner_url)}))
    for answer in (
        client.get("/v1/members/m/features"),
        ask(client, {"member_id": "m", "candidates": ["a"]}),
    ):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "partition 2 is being rebalanced" in answer.json()["error"]


def test_a_forwarded_request_is_never_forwarded_again() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"bounced on to {request.url}")

    client = TestClient(
        web_app(
            elsewhere={"m": NotOwned(2, OWNER)},
            http=httpx.AsyncClient(transport=httpx.MockTransport(never)),
        )
    )
    answer = client.get("/v1/members/m/features", headers={FORWARDED_HEADER: OWNER})
    assert answer.status_code == 503 and "being rebalanced" in answer.json()["error"]


def test_an_unreachable_owner_is_a_503_naming_it() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = TestClient(
        web_app(
            elsewhere={"m": NotOwned(3, OWNER)},
            http=httpx.AsyncClient(transport=httpx.MockTransport(refused)),
        )
    )
    for answer in (
        client.get("/v1/members/m/features"),
        ask(client, {"member_id": "m", "candidates": ["a"]}),
        client.get("/v1/console/members/m/ranking?candidates=a"),
    ):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        error = answer.json()["error"]
        assert f"partition 3 ({OWNER}) did not answer: ConnectError" in error


# -- erasure ---------------------------------------------------------------------------


def test_an_erasure_is_recorded_and_answered_202() -> None:
    erasures = ListErasures()
    client = TestClient(web_app(erasures=erasures))
    for _ in range(2):  # the same member twice: two erasures, both accepted
        response = client.delete("/v1/members/member-1")
        assert response.status_code == 202
        body = response.json()
        assert body["member_id"] == "member-1" and len(body["erasure_id"]) == 32
        assert body["requested_at"] == pytest.approx(time.time(), abs=5)
    assert [e.member_id for e in erasures.requested] == ["member-1", "member-1"]
    assert erasures.requested[0].erasure_id != erasures.requested[1].erasure_id
    assert erasures.requested[0].requested_by.startswith("api")


def test_an_erasure_with_a_bad_id_or_token_or_no_broker_is_a_clear_4xx_or_503() -> None:
    erasures = ListErasures()
    client = TestClient(web_app(erasures=erasures, api_token=TOKEN))
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert client.delete("/v1/members/m").status_code == 401
    assert client.delete("/v1/members/m", headers={"authorization": "Bearer x"}).status_code == 401
    too_long = client.delete(f"/v1/members/{'m' * (MAX_ID_LENGTH + 1)}", headers=auth)
    assert too_long.status_code == 422 and "over the limit" in too_long.json()["error"]
    control = client.delete("/v1/members/a%00b", headers=auth)
    assert control.status_code == 422 and "control" in control.json()["error"]
    assert client.delete("/v1/members/", headers=auth).status_code == 404
    assert erasures.requested == []
    down = TestClient(web_app(erasures=ListErasures(fail=True)))
    refused = down.delete("/v1/members/m")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
