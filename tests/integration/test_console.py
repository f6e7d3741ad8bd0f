"""The console in a real headless Chromium against a running worker with demo traffic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nearline.app.traffic import demo_items, demo_traffic_running
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.model.experiments import Arm, Assigner, Experiment
from nearline.model.heuristic import HEURISTIC_VERSION as H
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from tests.integration.browser import Chromium
from tests.integration.conftest import REPO, Deployment, Worker, wait_until

pytestmark = pytest.mark.integration

TOKEN = "console-test-token"
#: Demo items loaded: the console's default candidates (item-0..23) and those acted on.
ITEMS = 120
#: Where the browser test leaves its screenshot (git-ignored), besides pytest's tmp dir.
ARTIFACTS = REPO / "test-artifacts"
#: The experiment that runs, for the console's panel: two arms of the heuristic.
EXPERIMENT = Experiment("c1", (Arm("fresh", H, "fresh", 0.5), Arm("daily", H, "daily", 0.5)))


def member_in(arm: str, prefix: str) -> str:
    """A new member id that :data:`EXPERIMENT` puts in ``arm``."""
    index = [a.name for a in EXPERIMENT.arms].index(arm)
    assigner = Assigner(EXPERIMENT)
    return next(
        m
        for m in (f"{prefix}-{uuid.uuid4().hex[:6]}" for _ in range(1000))
        if assigner.index(m) == index
    )


@pytest.fixture(scope="module")
def console_stack(broker, tmp_path_factory) -> Iterator[tuple[Deployment, Worker]]:  # type: ignore[no-untyped-def]
    deployment = Deployment.isolated(
        broker, prefix="console", tmp=tmp_path_factory.mktemp("console"), log_level="INFO"
    )
    models = tmp_path_factory.mktemp("console-models")
    ModelRegistry(models, Vectorizer(VectorizerConfig())).start_experiment(EXPERIMENT)
    worker = deployment.worker(NEARLINE_API_TOKEN=TOKEN, NEARLINE_MODEL_DIR=str(models))
    worker.start().wait_ready()
    deployment.produce_to(
        deployment.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"], list(demo_items(ITEMS, 64))
    )
    wait_until(
        lambda: worker.metric('nearline_attribute_records_total{outcome="upserted"}') >= ITEMS,
        message="the demo items in the attribute store",
    )
    yield deployment, worker
    deployment.stop()


def action(member: str, item: int, kind: str) -> tuple[bytes, bytes]:
    """An action with no attributes of its own: the category shown is the ingest join's."""
    body = {
        "event_id": uuid.uuid4().hex,
        "member_id": member,
        "item_id": f"item-{item}",
        "action": kind,
        "ts": time.time(),
    }
    return member.encode(), codec.dumps(body)


def test_console_page_is_open_and_its_data_behind_the_token(
    console_stack: tuple[Deployment, Worker],
) -> None:
    deployment, worker = console_stack
    root = httpx.get(f"{worker.url}/", timeout=5)
    assert root.status_code == 307 and root.headers["location"] == "/console"
    page = worker.get("/console")
    assert page.status_code == 200 and "nearline console" in page.text
    script = worker.get("/console/static/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert worker.get("/console/config.json").json()["token_required"] is True

    member = f"ranked-{uuid.uuid4().hex[:6]}"
    for path in ("/v1/console/system", f"/v1/console/members/{member}/ranking"):
        assert worker.get(path).status_code == 401, path
    auth = {"authorization": f"Bearer {TOKEN}"}
    system = httpx.get(f"{worker.url}/v1/console/system", headers=auth, timeout=5).json()
    assert system["ready"] is True
    assert sorted(p["partition"] for p in system["partitions"]) == [0, 1, 2, 3]
    assert system["attribute_store"]["ok"] is True

    # Console rankings are previews: none of them may reach the recommendations log.
    for _ in range(3):
        preview = httpx.get(
            f"{worker.url}/v1/console/members/{member}/ranking",
            params={"candidates": "item-0,item-1,item-2"},
            headers=auth,
            timeout=5,
        )
        assert preview.status_code == 200
        assert [i["category"] for i in preview.json()["items"]] != []
    served = httpx.post(
        f"{worker.url}/v1/recommendations",
        json={"member_id": member, "candidates": ["item-0", "item-1"]},
        headers=auth,
        timeout=5,
    ).json()
    logged = deployment.consume(deployment.settings["NEARLINE_TOPIC_RECOMMENDATIONS_LOG"], 1)
    # Same member, same partition: a logged preview would come before the served response.
    assert codec.loads(logged[0].value)["request_id"] == served["request_id"]


def test_the_preview_ranks_as_the_members_arm_serves(
    console_stack: tuple[Deployment, Worker],
) -> None:
    """The preview uses the member's arm, as /v1/recommendations does: its ranker, on its
    feature mode (a daily arm's member's actions of today are not in its features yet)."""
    deployment, worker = console_stack
    members = {arm.name: member_in(arm.name, "armed") for arm in EXPERIMENT.arms}
    deployment.produce([action(m, 30, "apply") for m in members.values()])
    auth = {"authorization": f"Bearer {TOKEN}"}
    candidates = ["item-1", "item-2", "item-0", "item-6"]
    for arm, member in members.items():
        features = f"{worker.url}/v1/members/{member}/features"
        wait_until(
            lambda url=features: httpx.get(url, headers=auth, timeout=5).json()["recent_actions"],
            message=f"{member}'s apply applied",
        )
        preview = httpx.get(
            f"{worker.url}/v1/console/members/{member}/ranking",
            params={"candidates": ",".join(candidates)},
            headers=auth,
            timeout=5,
        ).json()
        served = httpx.post(
            f"{worker.url}/v1/recommendations",
            json={"member_id": member, "candidates": candidates},
            headers=auth,
            timeout=5,
        ).json()
        assert preview["experiment"] == served["experiment"] == {"id": "c1", "arm": arm}
        assert preview["model_version"] == served["model_version"]
        assert [i["item_id"] for i in preview["items"]] == [i["item_id"] for i in served["items"]]
        fresh = arm == "fresh"
        assert (preview["last_applied_at"] is not None) == fresh, (arm, preview)


_RANKING = "[...document.querySelectorAll('#ranking-{which} li[data-item]')]"


async def _ranking(browser: Chromium, which: str = "now") -> list[list[str]]:
    rows = f"{_RANKING.format(which=which)}.map(li => [li.dataset.item, li.dataset.category])"
    return await browser.evaluate(rows)  # type: ignore[no-any-return]


def test_console_in_a_browser_follows_a_member_and_the_system(
    console_stack: tuple[Deployment, Worker], tmp_path: Path
) -> None:
    deployment, worker = console_stack
    member = member_in("fresh", "watched")  # its ranking follows its actions as they come
    # Demo item n is in category n % 6: 0 engineering, 1 design (none of these is a candidate).
    engineering, design = [30, 36, 42, 48, 54], [31, 37, 43]

    async def scenario() -> None:
        async with Chromium() as browser:
            await browser.goto(f"{worker.url}/console?member={member}")
            # The worker has NEARLINE_API_TOKEN: the page asks for it before any /v1 call.
            await browser.wait_for(
                "!document.getElementById('token-form').hidden", what="the token form"
            )
            await browser.evaluate("document.getElementById('token-input').focus()")
            await browser.type_text(TOKEN)
            await browser.evaluate("document.querySelector('#token-form button').click()")
            await browser.wait_for("!document.getElementById('main').hidden", what="the console")

            # The member timeline grows as the member acts.
            first = [action(member, n, "click") for n in engineering[:3]]
            await asyncio.to_thread(deployment.produce, first)
            count = "document.querySelectorAll('#timeline li').length"
            await browser.wait_for(f"{count} >= 3", what="3 actions in the timeline")
            joined = await browser.evaluate(
                "document.querySelector('#timeline li').textContent.includes('engineering')"
            )
            assert joined, "the timeline shows the category joined at ingest"
            more = [action(member, engineering[3], "apply"), action(member, engineering[4], "save")]
            await asyncio.to_thread(deployment.produce, more)
            await browser.wait_for(f"{count} >= 5", what="the timeline to grow to 5")
            assert await browser.evaluate(count) == 5
            shown = await browser.evaluate(
                "[...document.querySelectorAll('#timeline li')].map(li => li.dataset.event)"
            )
            served = httpx.get(
                f"{worker.url}/v1/members/{member}/features",
                headers={"authorization": f"Bearer {TOKEN}"},
                timeout=5,
            ).json()
            assert shown == [a["event_id"] for a in served["recent_actions"]], "newest first"

            # The ranking panel follows an action on a new category.
            await browser.wait_for(
                f"{_RANKING.format(which='now')}[0]?.dataset.category === 'engineering'",
                what="engineering on top after engineering actions",
            )
            before = await _ranking(browser)
            shift = [action(member, n, "apply") for n in design[:2]]
            shift.append(action(member, engineering[0], "dismiss"))
            await asyncio.to_thread(deployment.produce, shift)
            await browser.wait_for(
                f"{_RANKING.format(which='now')}[0]?.dataset.category === 'design'",
                what="design on top after applying to design jobs",
            )
            after = await _ranking(browser)
            assert after != before
            assert await _ranking(browser, "before") == before, "the previous ranking beside"
            moved = "document.querySelectorAll('#ranking-now li.moved').length"
            assert await browser.evaluate(moved) > 0, "moved items are marked"

            # The system view shows the demo traffic coming in.
            rate = await browser.wait_for(
                "Number(document.getElementById('ingest-rate').dataset.value)",
                what="a non-zero ingest rate",
            )
            assert rate > 0
            await browser.wait_for(
                "document.getElementById('fresh-p50').textContent.endsWith('ms')",
                what="a freshness p50",
            )
            # The experiment's panel: its arms side by side, with their intervals.
            await browser.wait_for(
                "!document.getElementById('experiment-card').hidden", what="the experiment panel"
            )
            header = await browser.evaluate(
                "[...document.querySelectorAll('#experiment-arms th')].map(th => th.textContent)"
            )
            assert header == ["", "fresh", "daily"]
            ARTIFACTS.mkdir(exist_ok=True)
            shot = await browser.screenshot(tmp_path / "console.png")
            (ARTIFACTS / "console.png").write_bytes(shot.read_bytes())
            assert browser.errors == [], browser.errors

    # The demo's traffic (10 members and the shifting one) meanwhile, as in `nearline demo`.
    with demo_traffic_running(deployment.app_settings(), rate=20.0, members=10):
        asyncio.run(scenario())


def test_every_worker_serves_the_console_and_ranks_members_owned_elsewhere(
    deployment: Deployment,
) -> None:
    first = deployment.worker("w1").start().wait_ready()
    second = deployment.worker("w2").start().wait_ready()

    def owners() -> dict[str, dict[int, str]]:
        views = {w.url: w.get("/v1/console/system").json() for w in (first, second)}
        return {
            url: {p["partition"]: p["owner"] for p in view["partitions"] if view["ready"]}
            for url, view in views.items()
        }

    def split() -> bool:
        seen = owners()
        here = {url: {p for p, o in parts.items() if o == url} for url, parts in seen.items()}
        return bool(
            all(here.values())
            and sorted(here[first.url] | here[second.url]) == [0, 1, 2, 3]
            and seen[first.url] == seen[second.url]  # both say where every partition is
        )

    wait_until(split, timeout=60, message="partitions split, and each worker knows the other's")
    deployment.produce_to(
        deployment.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"], list(demo_items(40, 64))
    )
    for worker in (first, second):  # the embedded store: every worker keeps a full copy
        worker.wait_for_metric(
            'nearline_attribute_records_total{outcome="upserted"}', 40, timeout=30
        )
    mine = owners()[first.url]
    member = next(
        m
        for m in (f"elsewhere-{n}" for n in range(100))
        if mine[partition_for_key(m.encode(), 4)] == second.url
    )
    deployment.produce([action(member, 30, "apply"), action(member, 31, "dismiss")])
    wait_until(
        lambda: len(first.get(f"/v1/members/{member}/features").json()["recent_actions"]) == 2,
        message="both actions applied by the owner",
    )
    path = f"/v1/console/members/{member}/ranking"
    forwarded, local = first.get(path).json(), second.get(path).json()
    owner_state = second.get(f"/v1/members/{member}/features").json()
    assert forwarded["last_applied_at"] == owner_state["last_applied_at"] is not None
    assert forwarded["items"] == local["items"]
    assert forwarded["items"][0]["category"] == "engineering"  # item-30's; item-31's dismissed
