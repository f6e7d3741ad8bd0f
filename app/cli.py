"""The ``nearline`` command: broker, worker, produce, demo, topics, train, model."""

from __future__ import annotations

import os

# One OpenBLAS thread unless told otherwise: nearline's matrices are small, and a second
# BLAS thread spinning against the event loop on a busy core costs more than it saves.
# It must be set before numpy loads, hence here, first.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio
import signal
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from aiokafka.errors import KafkaConnectionError
from tqdm import tqdm

from nearline.app.broker import BrokerError, EmbeddedBroker
from nearline.app.training_options import canary_option, force_option, loss_option
from nearline.foundation.extras import MissingExtra
from nearline.foundation.settings import Settings, SettingsError, load_settings
from nearline.model.exceptions import ModelError

__all__ = ["main"]


T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _unreachable(settings: Settings) -> click.ClickException:
    return click.ClickException(
        f"cannot reach Kafka at {', '.join(settings.broker_url)}: is the broker running "
        "(`nearline broker`), and is NEARLINE_BROKER_URL right?"
    )


def _run(work: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run ``work``; an unreachable broker becomes a message that says what to check."""
    try:
        return asyncio.run(work)
    except KafkaConnectionError:
        raise _unreachable(settings) from None


class _Commands(click.Group):
    """The command group: a :class:`ModelError` from any command (a bad model file, examples
    or experiment) and a :class:`MissingExtra` (an optional dependency not installed) are
    printed as their message with exit status 1, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ModelError, MissingExtra) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """nearline: member actions in, fresh features and recommendations out, in seconds.

    Every command reads its configuration from NEARLINE_* environment variables
    (see the README's configuration table). Start with `nearline demo`.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9092, show_default=True, help="Kafka protocol port.")
def broker(host: str, port: int) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory only) until Ctrl-C.

    Topics and offsets live in memory: when the broker stops they are gone, and workers
    discard local state whose changelog no longer exists.
    """
    instance = EmbeddedBroker(host, port)
    try:
        instance.start()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"embedded broker listening on {instance.bootstrap} (pid {instance.pid})")
    click.echo(f"use it with: export NEARLINE_BROKER_URL={instance.url}")
    signal.signal(signal.SIGTERM, lambda *_: instance.stop())
    try:
        instance.wait()
    except KeyboardInterrupt:
        pass
    finally:
        instance.stop()
        click.echo("broker stopped")


@main.command()
def serve() -> None:
    """Serve the HTTP API from NEARLINE_SERVE_PROCESSES processes beside a worker.

    Run it next to `nearline worker` with the same NEARLINE_* settings (the same data dir
    above all): the worker ingests, the serving processes answer features, recommendations
    and the console on NEARLINE_WEB_PORT, reading the worker's RocksDB through secondary
    instances. A serving process that dies is started again; while the worker restarts they
    go on answering from its last state, flagged "stale_ms".
    """
    from nearline.app.supervisor import run_serving

    run_serving(_settings())


@main.command()
def worker() -> None:
    """Run a worker: the ingest agent, the online store and the HTTP API on one event loop.

    Start as many as the actions topic has partitions; each serves the members of the
    partitions it owns and forwards other requests to their owner. With
    NEARLINE_SERVE_PROCESSES above 0 the HTTP API is left to `nearline serve` (run it
    beside the worker, with the same settings), and the worker answers its probes and
    metrics on NEARLINE_WORKER_PORT.
    """
    from nearline.app.web_server import WebServerError
    from nearline.app.worker import run_worker

    settings = _settings()
    try:
        run_worker(settings)
    except WebServerError as exc:
        raise click.ClickException(str(exc)) from None
    except KafkaConnectionError:
        raise _unreachable(settings) from None


@main.command()
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--generate", "count", type=int, help="Generate this many demo actions instead of reading FILE."
)
@click.option(
    "--members", default=1000, show_default=True, help="Distinct members when generating."
)
@click.option(
    "--rate",
    type=float,
    help="At most this many actions per second (default: as fast as possible).",
)
@click.option("--seed", default=7, show_default=True, help="Random seed when generating.")
def produce(
    file: Path | None, count: int | None, members: int, rate: float | None, seed: int
) -> None:
    """Send actions to the actions topic from a JSONL FILE or from the generator.

    Each line of FILE is one action event (see the README); it is keyed by its member_id.
    """
    from nearline.app.traffic import generate_actions, read_jsonl
    from nearline.app.traffic import produce as send

    settings = _settings()
    if (file is None) == (count is None):
        raise click.UsageError("give either FILE or --generate N")
    if file is not None:
        records = read_jsonl(file)
        total = None
    else:
        assert count is not None
        records = (
            (e.member_id.encode(), e.to_json())
            for e in generate_actions(count, members=members, seed=seed)
        )
        total = count
    with tqdm(total=total, unit="actions", desc="producing") as bar:
        try:
            sent = _run(send(settings, records, rate=rate, progress=bar), settings)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"sent {sent} actions to {settings.topic_actions}")


@main.command()
def topics() -> None:
    """Create nearline's topics (partitions, retention, compaction) if they are missing."""
    from nearline.foundation.topics import ensure_topics

    settings = _settings()
    created = _run(ensure_topics(settings), settings).created
    click.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@main.group()
def attributes() -> None:
    """Item and member attributes: the store that joins enrich actions with."""


@attributes.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["items", "members"]), default="items", show_default=True)
@click.option(
    "--direct",
    is_flag=True,
    help="Write to the attribute store itself instead of the item-attributes topic "
    "(Aerospike, or the embedded store while no worker holds it). Members always load directly.",
)
@click.option("--batch-size", default=1000, show_default=True, help="Records per write.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def attributes_load(file: Path, kind: str, direct: bool, batch_size: int, quiet: bool) -> None:
    """Load item or member attributes from a JSONL, CSV or Parquet FILE.

    Bad records (wrong embedding dimension, NaN, missing id, bad JSON) are reported with
    their line number and skipped; the rest loads. By default items go to the compacted
    item-attributes topic, so every worker's store picks them up.
    """
    from nearline.app.loading import load_attributes
    from nearline.attribute_store import LoadFailed

    settings = _settings()
    try:
        summary = _run(
            load_attributes(
                settings,
                file,
                kind=kind,  # type: ignore[arg-type]
                direct=direct or kind == "members",
                batch_size=batch_size,
                progress=not quiet,
            ),
            settings,
        )
    except LoadFailed as exc:
        raise click.ClickException(str(exc)) from None
    for line, reason in summary.errors[:20]:
        click.echo(f"  {file}:{line}: skipped: {reason}", err=True)
    if len(summary.errors) > 20:
        click.echo(f"  ... and {summary.skipped - 20} more skipped", err=True)
    click.echo(f"loaded {summary.loaded} {kind}, skipped {summary.skipped}")


@main.command("export-training")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Parquet file to write.",
)
def export_training(out: Path) -> None:
    """Write the training-examples topic (recommendations joined with outcomes) to Parquet.

    Examples of erased members (requested at or before their erasure) are left out.
    """
    from nearline.agents.erasures import ErasuresUnreadable
    from nearline.app.compose import vectorizer_from_settings
    from nearline.app.exporting import ExportError
    from nearline.app.exporting import export_training as export

    settings = _settings()
    names = vectorizer_from_settings(settings).feature_names
    try:
        examples, left_out = _run(export(settings, out, names), settings)
    except (ExportError, ErasuresUnreadable) as exc:
        raise click.ClickException(str(exc)) from None
    positives = int(examples.label.sum())
    click.echo(
        f"wrote {len(examples)} examples ({positives} positive) of "
        f"{examples.n_requests} requests to {out}"
        + (f"; left out {left_out} examples of erased members" if left_out else "")
    )


def _registry(model_dir: Path | None, settings: Settings) -> Any:
    """The model registry of ``--model-dir`` or NEARLINE_MODEL_DIR."""
    from nearline.app.compose import vectorizer_from_settings
    from nearline.model.registry import ModelRegistry

    directory = model_dir or settings.model_dir
    if directory is None:
        raise click.UsageError("give --model-dir or set NEARLINE_MODEL_DIR")
    return ModelRegistry(directory, vectorizer_from_settings(settings), backend="default")


_MODEL_DIR = click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where model versions live (default: NEARLINE_MODEL_DIR).",
)


@main.command()
@click.argument("examples", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_MODEL_DIR
@click.option("--max-epochs", default=30, show_default=True)
@loss_option()
@click.option(
    "--validation-fraction",
    default=0.2,
    show_default=True,
    help="Share of the latest requests held out for validation.",
)
@click.option(
    "--margin",
    default=0.0,
    show_default=True,
    help="The gate: the lower bound of the NDCG@10 gain's interval must exceed this.",
)
@click.option("--confidence", default=0.95, show_default=True, help="The gate's interval level.")
@force_option()
@click.option(
    "--compare-losses",
    is_flag=True,
    help="Train once per loss on the same split, print the table, save nothing.",
)
@click.option("--seed", default=0, show_default=True)
@canary_option()
@click.option(
    "--skip-erasure-check",
    is_flag=True,
    help="Train on EXAMPLES as they are, without reading the erasures topic to leave out "
    "erased members' examples (only for a file no member was erased from since its export).",
)
def train(
    examples: Path,
    model_dir: Path | None,
    max_epochs: int,
    loss: str,
    validation_fraction: float,
    margin: float,
    confidence: float,
    force: bool,
    compare_losses: bool,
    seed: int,
    canary: float | None,
    skip_erasure_check: bool,
) -> None:
    """Train the scorer on exported EXAMPLES; publish it only if it beats the served ranker.

    Validation uses the latest requests (split by time, never shuffled across time);
    training stops early on their NDCG@10. The gate compares the candidate with the ranker
    now served (the active model, or the heuristic) on the same requests: NDCG@10, MRR and
    HR@10 with paired bootstrap intervals over requests. A refused candidate is saved as
    rejected and the command exits with status 1; --force publishes anyway. Running
    workers follow a published version within NEARLINE_MODEL_RELOAD_INTERVAL.

    Examples of members erased since the export are left out: the erasures topic is read
    first (so the broker must answer, unless --skip-erasure-check).
    """
    from nearline.model.gate import GateRules
    from nearline.model.training import TrainingConfig
    from nearline.model.training import compare_losses as compare
    from nearline.model.training import train as fit

    settings = _settings()
    registry = _registry(model_dir, settings)
    try:
        config = TrainingConfig(
            max_epochs=max_epochs,
            loss=loss,  # type: ignore[arg-type]
            validation_fraction=validation_fraction,
            seed=seed,
        )
        rules = GateRules(margin=margin, level=confidence, seed=seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    data = _without_erased(examples, settings, skip_erasure_check)
    if compare_losses:
        reports = compare(data, config, registry.vectorizer)
        click.echo("loss        NDCG@10  MRR     HR@10   AUC     best epoch")
        for name, report in reports.items():
            m = report.model
            click.echo(
                f"{name:<11} {m.ndcg_at_10:.4f}   {m.mrr:.4f}  {m.hr_at_10:.4f}  "
                f"{m.auc:.4f}  {report.best_epoch}/{report.epochs_run}"
            )
        h = next(iter(reports.values())).heuristic
        click.echo(
            f"{'heuristic':<11} {h.ndcg_at_10:.4f}   {h.mrr:.4f}  {h.hr_at_10:.4f}  {h.auc:.4f}"
        )
        return
    registry.model_dir.mkdir(parents=True, exist_ok=True)
    report = fit(data, registry, config, rules=rules, force=force, canary=canary)
    click.echo(report.summary())
    if not report.published:
        raise click.ClickException(
            "the model was not published (see the gate above); it is saved as rejected, "
            "`nearline model activate VERSION` or `nearline train --force` serves it anyway"
        )


def _without_erased(examples: Path, settings: Settings, skip: bool) -> Any:
    """The examples of the file, less those of members erased (the erasures topic now)."""
    from nearline.agents.erasures import ErasuresUnreadable, read_erasures
    from nearline.app.compose import erasures_topic, topic_reader_of
    from nearline.app.exporting import without_erased
    from nearline.model.dataset import read_examples

    data = read_examples(examples)
    if skip:
        return data
    try:
        erasures = _run(
            read_erasures(topic_reader_of(settings), erasures_topic(settings)), settings
        )
    except ErasuresUnreadable as exc:
        raise click.ClickException(str(exc)) from None
    data, left_out = without_erased(data, erasures)
    if left_out:
        click.echo(f"left out {left_out} examples of erased members")
    return data


@main.group()
def members() -> None:
    """Members: erase one's data from every store."""


@members.command("erase")
@click.argument("member_ids", nargs=-1)
@click.option(
    "--file",
    "from_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file of member ids, one a line (blank lines skipped).",
)
def members_erase(member_ids: tuple[str, ...], from_file: Path | None) -> None:
    """Erase the members MEMBER_IDS (and those of --file) from every store.

    Each erasure is recorded in the erasures topic (the command returns once the broker has
    them all); the worker owning each member deletes its features, pending outcomes and
    attributes within seconds, and events at or before the erasure are ignored from then
    on. Prints each member's erasure id. Nothing is sent if any id is invalid.
    """
    import getpass

    from nearline.agents.erasures import Erasure, InvalidMemberId, check_member_id

    named = [(f"argument {n}", m) for n, m in enumerate(member_ids, 1)]
    if from_file is not None:
        lines = from_file.read_text(encoding="utf-8").splitlines()
        named += [(f"{from_file}:{n}", line.strip()) for n, line in enumerate(lines, 1)]
        named = [(where, m) for where, m in named if m or where.startswith("argument")]
    if not named:
        raise click.UsageError("name the members to erase, or give --file")
    problems = []
    for where, member_id in named:
        try:
            check_member_id(member_id)
        except InvalidMemberId as exc:
            problems.append(f"  {where}: {exc}")
    if problems:
        raise click.ClickException("nothing erased; invalid member ids:\n" + "\n".join(problems))
    settings = _settings()
    requested_by = f"cli:{getpass.getuser()}"
    erasures = [Erasure.new(member_id, requested_by) for _, member_id in named]
    _run(_send_erasures(settings, erasures), settings)
    for erasure in erasures:
        click.echo(f"{erasure.member_id}\t{erasure.erasure_id}")
    click.echo(f"requested {len(erasures)} erasures", err=True)


async def _send_erasures(settings: Settings, erasures: list[Any]) -> None:
    from aiokafka import AIOKafkaProducer

    from nearline.agents.erasures import send_erasures
    from nearline.app.compose import erasures_topic
    from nearline.foundation.kafka import client_options
    from nearline.foundation.topics import ensure_topics

    await ensure_topics(settings)  # compacted and partitioned as the workers expect
    producer = AIOKafkaProducer(**client_options(settings, producer=True))
    await producer.start()
    try:
        await send_erasures(producer, erasures_topic(settings), erasures)
    finally:
        await producer.stop()


@main.command()
@_MODEL_DIR
@loss_option()
@click.option("--max-epochs", default=30, show_default=True)
@canary_option()
@click.option("--seed", default=0, show_default=True)
def trainer(
    model_dir: Path | None, loss: str, max_epochs: int, canary: float | None, seed: int
) -> None:
    """Export the training-examples topic, train, gate and publish: one scheduled run.

    What `nearline export-training` and `nearline train` do in turn, for a scheduler (a
    Kubernetes CronJob). A candidate the gate refuses is saved as rejected and the run
    still succeeds: refusing is the gate doing its work, not a failure to retry.
    """
    from nearline.agents.erasures import ErasuresUnreadable
    from nearline.app.exporting import ExportError
    from nearline.app.exporting import export_training as export
    from nearline.model.gate import GateRules
    from nearline.model.training import TrainingConfig
    from nearline.model.training import train as fit

    settings = _settings()
    registry = _registry(model_dir, settings)
    try:
        config = TrainingConfig(max_epochs=max_epochs, loss=loss, seed=seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="nearline-trainer-") as directory:
        examples = Path(directory) / "examples.parquet"
        try:
            exported, left_out = _run(
                export(settings, examples, registry.vectorizer.feature_names), settings
            )
            click.echo(
                f"exported {len(exported)} examples of {exported.n_requests} requests"
                + (f"; left out {left_out} examples of erased members" if left_out else "")
            )
            registry.model_dir.mkdir(parents=True, exist_ok=True)
            report = fit(examples, registry, config, rules=GateRules(seed=seed), canary=canary)
        except (ExportError, ErasuresUnreadable) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(report.summary())


@main.group()
def model() -> None:
    """Model versions: which is served, their metrics, activate one, roll back."""


@model.command("list")
@_MODEL_DIR
def model_list(model_dir: Path | None) -> None:
    """Every version with its status and validation metrics; * marks the one served."""

    registry = _registry(model_dir, _settings())
    served = registry.served()
    rows = [(v, registry.metadata(v)) for v in registry.versions()]
    how = "active file" if served.pinned else "newest unrejected version"
    click.echo(
        f"served: {served.version} ({how}); rollback to: {', '.join(served.previous) or '-'}"
    )
    click.echo(
        f"  {'version':<30} {'status':<10} {'loss':<10} {'NDCG@10':>8} {'MRR':>7} {'HR@10':>7} "
        f"{'vs served':>10}  against"
    )
    for version, meta in rows:
        metrics = (meta.get("metrics") or {}).get("validation") or {}
        gate = meta.get("gate") or {}
        gain = ((gate.get("metrics") or {}).get("ndcg_at_10") or {}).get("difference")
        mark = "*" if version == served.version else " "

        def number(value: Any, width: int) -> str:
            return f"{value:>{width}.4f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

        click.echo(
            f"{mark} {version:<30} {meta.get('status', '-'):<10} "
            f"{(meta.get('training') or {}).get('loss', '-'):<10} "
            f"{number(metrics.get('ndcg_at_10'), 8)} {number(metrics.get('mrr'), 7)} "
            f"{number(metrics.get('hr_at_10'), 7)} {number(gain, 10)}  "
            f"{gate.get('served_version', '-')}"
        )
    if served.version == "heuristic-v1":
        click.echo("* heuristic-v1 (no model file)")


@model.command("activate")
@click.argument("version")
@_MODEL_DIR
def model_activate(version: str, model_dir: Path | None) -> None:
    """Serve VERSION (or heuristic-v1); workers follow within NEARLINE_MODEL_RELOAD_INTERVAL."""

    registry = _registry(model_dir, _settings())
    served = registry.activate(version)
    click.echo(f"serving {served.version} (rollback to: {', '.join(served.previous) or '-'})")


@model.command("rollback")
@_MODEL_DIR
def model_rollback(model_dir: Path | None) -> None:
    """Serve again the version served before the current one."""

    registry = _registry(model_dir, _settings())
    served = registry.rollback()
    click.echo(f"serving {served.version} (rollback to: {', '.join(served.previous) or '-'})")


@main.group()
def experiment() -> None:
    """Online experiments: members split between arms (ranker x feature mode) by a hash."""


@experiment.command("start")
@click.argument("experiment_id")
@click.option(
    "--arm",
    "arms",
    multiple=True,
    required=True,
    help="NAME:VERSION:FEATURES:SHARE, e.g. control:heuristic-v1:fresh:0.5 (two or more; "
    "FEATURES is fresh or daily, as of the day's start; shares sum to 1).",
)
@click.option(
    "--day-origin",
    type=float,
    default=0.0,
    show_default=True,
    help="A daily arm's days start at this Unix time (and every --day-length from it); "
    "the default, 0, with the default length is midnight UTC.",
)
@click.option(
    "--day-length",
    type=float,
    default=86_400.0,
    show_default=True,
    help="A daily arm's day in seconds, e.g. shorter for a replay with a compressed clock.",
)
@_MODEL_DIR
def experiment_start(
    experiment_id: str,
    arms: tuple[str, ...],
    day_origin: float,
    day_length: float,
    model_dir: Path | None,
) -> None:
    """Start EXPERIMENT_ID; workers follow within NEARLINE_MODEL_RELOAD_INTERVAL.

    One experiment runs at a time: a second is refused until the first is stopped.
    """
    from nearline.model.experiments import Experiment, parse_arm

    registry = _registry(model_dir, _settings())
    started = Experiment(
        experiment_id,
        tuple(parse_arm(arm) for arm in arms),
        day_origin=day_origin,
        day_length=day_length,
    )
    registry.start_experiment(started)
    click.echo(
        f"experiment {experiment_id} started with arms {', '.join(a.name for a in started.arms)}"
    )


def _current_experiment(registry: Any) -> Any:

    current = registry.read_experiment()
    if current is None:
        raise click.ClickException("no experiment (start one with `nearline experiment start`)")
    return current


def _experiment_results(settings: Settings, current: Any) -> Any:
    """The arms' results from the training-examples topic; a missing topic is a message."""
    from nearline.app.experiments import read_results
    from nearline.app.exporting import ExportError

    try:
        return _run(read_results(settings, current), settings)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None


_METRIC = click.option(
    "--metric",
    type=click.Choice(["ndcg_at_10", "mrr", "positive_rate", "dismiss_rate"]),
    default="ndcg_at_10",
    show_default=True,
    help="The metric arms are compared on.",
)


@experiment.command("status")
@_METRIC
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@_MODEL_DIR
def experiment_status(metric: str, as_json: bool, model_dir: Path | None) -> None:
    """Per-arm outcomes and metrics with intervals, from every worker's labelled responses."""
    from nearline.app.experiments import status_text
    from nearline.foundation import codec

    settings = _settings()
    current = _current_experiment(_registry(model_dir, settings))
    results = _experiment_results(settings, current)
    if as_json:
        click.echo(codec.dumps(results.to_dict()).decode())
    else:
        click.echo(status_text(results, metric))


@experiment.command("stop")
@_MODEL_DIR
def experiment_stop(model_dir: Path | None) -> None:
    """Stop the running experiment: every member gets the default ranker again."""

    stopped = _registry(model_dir, _settings()).stop_experiment()
    click.echo(f"experiment {stopped.id} stopped")


@experiment.command("promote")
@_METRIC
@click.option("--arm", help="The arm to promote (default: the best on --metric).")
@click.option("--force", is_flag=True, help="Promote even if the difference is not significant.")
@_MODEL_DIR
def experiment_promote(metric: str, arm: str | None, force: bool, model_dir: Path | None) -> None:
    """Make the winning arm's ranker the default and stop the experiment.

    Refused while the interval of the metric's difference to any other arm includes 0,
    unless --force.
    """
    from nearline.app.experiments import decide_promotion

    settings = _settings()
    registry = _registry(model_dir, settings)
    current = _current_experiment(registry)
    if not current.running:
        raise click.ClickException(f"experiment {current.id} is not running")
    results = _experiment_results(settings, current)
    promotion = decide_promotion(results, metric, arm)
    refusal = promotion.refusal()
    if refusal is not None and not force:
        raise click.ClickException(f"not promoting {promotion.winner}: {refusal}")
    winner = current.arm(promotion.winner)
    registry.activate(winner.version)
    registry.stop_experiment(promoted=winner.name)
    forced = " (forced)" if refusal is not None else ""
    click.echo(
        f"promoted {winner.name}{forced}: serving {winner.version}; experiment {current.id} stopped"
    )
    if winner.features == "daily":
        click.echo("note: the default serves fresh features; the arm's daily mode is not kept")


DEMO_ITEMS = 5000


@main.command()
@click.option("--port", default=8080, show_default=True, help="HTTP port of the worker.")
@click.option("--broker-port", default=0, help="Broker port (default: a free one).")
@click.option("--rate", default=20.0, show_default=True, help="Demo actions per second.")
@click.option("--members", default=20, show_default=True, help="Demo members.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C).")
def demo(port: int, broker_port: int, rate: float, members: int, duration: float | None) -> None:
    """Embedded broker + one worker (and its serving processes) + live demo traffic.

    One demo member (member-shifting) moves from one job category to the next every 30 of
    their actions; the console shows their ranking follow.
    """
    from nearline.app.stack import Stack, StackError
    from nearline.app.traffic import (
        DEMO_CATALOGUE_SAMPLE,
        DEMO_MALFORMED_EVERY,
        DEMO_SHIFTING_MEMBER,
        demo_items,
        demo_records,
    )
    from nearline.app.traffic import produce as send

    with EmbeddedBroker(port=broker_port or None) as instance:
        # The default app id and topics: the demo is the deployment, nothing to keep apart.
        stack = Stack(
            broker=instance,
            tmp=Path(tempfile.mkdtemp(prefix="nearline-demo-")),
            settings={
                "NEARLINE_PROFILE": "embedded",
                "NEARLINE_BROKER_URL": instance.url,
                "NEARLINE_LOG_LEVEL": os.environ.get("NEARLINE_LOG_LEVEL", "WARNING"),
                # The API from serving processes of their own, as the Helm chart runs it.
                "NEARLINE_SERVE_PROCESSES": os.environ.get("NEARLINE_SERVE_PROCESSES", "2"),
            },
        )
        # Its log goes to the terminal; Ctrl-C there reaches the demo only, which stops it.
        worker = stack.worker(port=port, terminal=True)
        try:
            settings = stack.app_settings(web_port=port)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None
        console = f"{settings.web_url}/console?member={DEMO_SHIFTING_MEMBER}"
        click.echo(f"console: {console}  (live once the worker is ready)")
        click.echo(
            f"broker on {instance.bootstrap}; starting a worker (state in {worker.data_dir})"
        )
        worker.start(new_session=True)
        try:
            try:
                worker.wait_ready(timeout=60)
            except StackError as exc:
                raise click.ClickException(f"{exc}; see its log above") from None
            items = list(demo_items(DEMO_ITEMS, settings.embedding_dim))
            asyncio.run(send(settings, items, topic=settings.topic_item_attributes))
            click.echo(f"loaded {len(items)} demo items into the attribute store")
            url = f"{settings.web_url}/v1/members/{DEMO_SHIFTING_MEMBER}/features"
            click.echo("")
            click.echo(f"  ready. Open the console:  {console}")
            click.echo(f"  {DEMO_SHIFTING_MEMBER} changes job category every 30 of their actions;")
            click.echo(
                f"  one record in {DEMO_MALFORMED_EVERY} is malformed (see the dead letters)"
            )
            click.echo(f"  the same as JSON:  watch -n1 curl -s {url}")
            click.echo(f"  metrics: {settings.web_url}/metrics    stop: Ctrl-C")
            click.echo("")
            count = int(rate * duration) if duration else None
            records = demo_records(count, members=members)
            # Ctrl-C ends the traffic loop gracefully; then the worker and broker stop.
            stopping = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stopping.set())
            signal.signal(signal.SIGTERM, lambda *_: stopping.set())
            with tqdm(total=count, unit="actions", desc="demo traffic") as bar:
                asyncio.run(
                    send(settings, records, rate=rate, progress=bar, should_stop=stopping.is_set)
                )
            if stopping.is_set():
                click.echo("stopping")
                return
            time.sleep(1.0)
            body = httpx.get(url, timeout=2).json()
            click.echo(f"{DEMO_SHIFTING_MEMBER} now: {body['counts']}")
            ranked = httpx.post(
                f"{settings.web_url}/v1/recommendations",
                json={
                    "member_id": DEMO_SHIFTING_MEMBER,
                    "candidates": list(DEMO_CATALOGUE_SAMPLE),
                    "k": 5,
                },
                timeout=5,
            ).json()
            click.echo(
                f"top 5 of {len(DEMO_CATALOGUE_SAMPLE)} candidates for {DEMO_SHIFTING_MEMBER}: "
                f"{ranked['items']}"
            )
        except KeyboardInterrupt:
            click.echo("stopping")
        finally:
            worker.stop(timeout=15)
