"""Regenerates docs/experiment-panel.png, the README's picture of the console's Experiment panel.

Run: ``python -m bench.screenshots [--out docs/experiment-panel.png]`` (Debian's chromium on
PATH; about a minute).

Real processes, as the integration tests start them: an embedded broker and one worker
with a short outcome horizon, running an experiment of two arms of the heuristic (fresh
features against the previous midnight's). The members of
``tests/integration/test_experiments.py`` request rankings and react to them for a few
rounds, with its reactions, each round labelled before the next; then headless Chromium
opens the console and the panel (``#experiment-card``) is captured.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from functools import partial
from pathlib import Path

import httpx

from bench.harness import REPO
from nearline.app.broker import EmbeddedBroker
from nearline.app.compose import vectorizer_from_settings
from nearline.app.stack import Stack, wait_until
from nearline.app.traffic import demo_items
from nearline.model.experiments import Arm, Experiment
from nearline.model.heuristic import HEURISTIC_VERSION as H
from nearline.model.registry import ModelRegistry
from tests.integration.browser import Chromium
from tests.integration.test_experiments import CANDIDATES, _round
from tests.integration.test_ingest import records

EXPERIMENT = Experiment("e1", (Arm("fresh", H, "fresh", 0.5), Arm("daily", H, "daily", 0.5)))
ROUNDS = 3
#: Is every arm's NDCG@10 shown with its interval (no "—" left in its row)?
NDCG_SHOWN = (
    "[...document.querySelectorAll('#experiment-arms tr')]"
    ".some(tr => tr.textContent.startsWith('NDCG@10') && !tr.textContent.includes('—'))"
)


async def _capture(url: str, out: Path) -> None:
    async with Chromium(width=1400, height=1400) as browser:
        await browser.goto(f"{url}/console")
        await browser.wait_for(NDCG_SHOWN, timeout=30, what="both arms' metrics in the panel")
        await browser.screenshot(out, element="#experiment-card")
        if browser.errors:
            raise RuntimeError(f"the console reported errors: {browser.errors}")


def screenshot(out: Path) -> int:
    """Run the stack, drive the traffic, capture the panel at ``out``; the responses shown."""
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="nearline-shot-") as tmp:
        stack = Stack.isolated(broker, prefix="shot", tmp=tmp)
        try:
            settings = stack.app_settings()
            models = Path(tmp) / "models"
            registry = ModelRegistry(models, vectorizer_from_settings(settings))
            registry.start_experiment(EXPERIMENT)
            worker = stack.worker(
                NEARLINE_MODEL_DIR=str(models), NEARLINE_OUTCOME_HORIZON="5s"
            ).start()
            worker.wait_ready()
            items = list(demo_items(len(CANDIDATES), settings.embedding_dim))
            stack.produce_to(settings.topic_item_attributes, items)
            worker.wait_for_metric(
                'nearline_attribute_records_total{outcome="upserted"}', len(items), timeout=30
            )

            def labelled(at_least: int) -> bool:
                view = httpx.get(f"{worker.url}/v1/console/experiment", timeout=5).json()
                return sum(arm["totals"]["responses"] for arm in view["arms"].values()) >= at_least

            rng = random.Random(26)
            responses = 0
            for _ in range(ROUNDS):
                served, reactions = asyncio.run(_round(worker.url, rng, EXPERIMENT.id))
                stack.produce(records(reactions))
                responses += served
                # Labelled before the next round: an action within the horizon of two
                # responses that showed its item would count for both.
                wait_until(partial(labelled, responses), timeout=60, message="labelled")
            asyncio.run(_capture(worker.url, out))
            return responses
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "experiment-panel.png")
    args = parser.parse_args()
    responses = screenshot(args.out)
    print(f"{args.out}: the Experiment panel, {responses} labelled responses")


if __name__ == "__main__":
    main()
