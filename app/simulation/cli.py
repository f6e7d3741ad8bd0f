"""The ``nearline simulate`` command: options in, a report folder out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from app.simulation.runner import SimulationConfig

__all__ = ["simulate"]

_BEHAVIOUR = "behaviour model (see app/simulation/behaviour.py)"


@click.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.md, the PNG plots, sessions.csv and the worker log.",
)
@click.option("--days", default=7, show_default=True, help="Measured simulated days.")
@click.option(
    "--warmup-days",
    default=1,
    show_default=True,
    help="Simulated days before the measurement in which every member gets fresh features "
    "(gives both arms a history); not counted in the results.",
)
@click.option("--members", default=200, show_default=True, help="Members (split ~50/50).")
@click.option("--items", default=2000, show_default=True, help="Jobs in the catalogue.")
@click.option(
    "--sessions-per-day",
    default=4.0,
    show_default=True,
    help="Mean sessions per member per simulated day (Poisson).",
)
@click.option(
    "--candidates", default=100, show_default=True, help="Jobs the worker ranks per session."
)
@click.option("-k", "--k", "k", default=10, show_default=True, help="Top k shown per session.")
@click.option(
    "--drift",
    default=0.3,
    show_default=True,
    help="Drift speed: focus changes (new job family) per member per simulated day. 0 = none.",
)
@click.option(
    "--move-rate",
    default=0.1,
    show_default=True,
    help="Moves to another city per member per simulated day. 0 = none.",
)
@click.option("--topics", default=8, show_default=True, help="Job families (categories).")
@click.option("--cities", default=6, show_default=True, help="Cities (geo regions).")
@click.option(
    "--embedding-dim",
    default=16,
    show_default=True,
    help="Item embedding dimension; the worker is started with NEARLINE_EMBEDDING_DIM set to it.",
)
@click.option(
    "--compression",
    default=2000.0,
    show_default=True,
    help="Simulated seconds per wall-clock second (2000: a day is 43.2 s). The worker's "
    "windows, retention and bucket are divided by it.",
)
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A trained model directory for the worker (default: the heuristic ranker).",
)
@click.option(
    "--train",
    is_flag=True,
    help="Close the learning loop: train on the warm-up's logged outcomes through the "
    "promotion gate, rank the measured days with what it publishes, and run the same world "
    "with the heuristic to compare (two runs: twice the wall time).",
)
@click.option("--force", is_flag=True, help="With --train: publish even if the gate refuses.")
@click.option(
    "--loss",
    type=click.Choice(["pointwise", "listwise", "pairwise"]),
    default="pairwise",
    show_default=True,
    help="With --train: the training loss.",
)
@click.option(
    "--unlabeled-as",
    type=click.Choice(["skip", "negative"]),
    default="skip",
    show_default=True,
    help="The worker's NEARLINE_UNLABELED_AS: skip = only jobs the member reacted to "
    "become examples; negative = every other logged job (the shown ones) is a negative.",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the world and behaviour.")
@click.option(
    "--interest-weight", default=4.0, show_default=True, help=f"{_BEHAVIOUR}: weight of cos."
)
@click.option(
    "--geo-weight", default=1.5, show_default=True, help=f"{_BEHAVIOUR}: same-city bonus."
)
@click.option("--offset", default=3.0, show_default=True, help=f"{_BEHAVIOUR}: affinity offset.")
@click.option(
    "--sharpness", default=1.5, show_default=True, help=f"{_BEHAVIOUR}: slope of the sigmoids."
)
@click.option(
    "--examine-decay",
    default=0.9,
    show_default=True,
    help=f"{_BEHAVIOUR}: P(examine rank r) = decay^r (position bias).",
)
@click.option(
    "--dismiss-max",
    default=0.4,
    show_default=True,
    help=f"{_BEHAVIOUR}: P(dismiss | examined) for a hopeless match.",
)
@click.option(
    "--click-max",
    default=0.4,
    show_default=True,
    help=f"{_BEHAVIOUR}: P(click | examined) for a perfect match.",
)
@click.option(
    "--apply-given-click", default=0.3, show_default=True, help=f"{_BEHAVIOUR}: P(apply | click)."
)
@click.option(
    "--save-given-click",
    default=0.2,
    show_default=True,
    help=f"{_BEHAVIOUR}: P(save | click, no apply).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(
    out: Path,
    days: int,
    warmup_days: int,
    members: int,
    items: int,
    sessions_per_day: float,
    candidates: int,
    k: int,
    drift: float,
    move_rate: float,
    topics: int,
    cities: int,
    embedding_dim: int,
    compression: float,
    model_dir: Path | None,
    train: bool,
    force: bool,
    loss: str,
    unlabeled_as: str,
    seed: int,
    interest_weight: float,
    geo_weight: float,
    offset: float,
    sharpness: float,
    examine_decay: float,
    dismiss_max: float,
    click_max: float,
    apply_given_click: float,
    save_given_click: float,
    quiet: bool,
) -> None:
    """Does freshness pay? Run near-real-time vs daily-batch features through the real system.

    Starts an embedded broker and a `nearline worker`, loads a seeded synthetic job
    catalogue through the item-attributes topic, and plays members' sessions in compressed
    time: each session asks POST /v1/recommendations (the batch arm with features_as_of =
    the last daily cut-off), draws the member's reactions from the behaviour model, and
    produces them to the actions topic. Writes OUT/report.md with per-arm dismiss rate,
    engaged-session share and applies per session (95 % cluster-bootstrap CIs), the change
    NRT vs batch beside the seed's figures, and daily plots.
    """
    from app.broker import BrokerError
    from app.simulation.behaviour import BehaviourModel
    from app.simulation.report import compare, write_report
    from app.simulation.runner import SimulationConfig, SimulationError
    from app.simulation.runner import simulate as run
    from app.simulation.world import WorldConfig
    from app.stack import StackError

    if k > candidates:
        raise click.BadParameter("must not exceed --candidates", param_hint="--k")
    try:
        config = SimulationConfig(
            world=WorldConfig(
                seed=seed,
                members=members,
                items=items,
                days=days,
                warmup_days=warmup_days,
                sessions_per_day=sessions_per_day,
                candidates=candidates,
                topics=topics,
                cities=cities,
                embedding_dim=embedding_dim,
                focus_changes_per_day=drift,
                moves_per_day=move_rate,
            ),
            behaviour=BehaviourModel(
                interest_weight=interest_weight,
                geo_weight=geo_weight,
                offset=offset,
                sharpness=sharpness,
                examine_decay=examine_decay,
                dismiss_max=dismiss_max,
                click_max=click_max,
                apply_given_click=apply_given_click,
                save_given_click=save_given_click,
            ),
            compression=compression,
            k=k,
            model_dir=model_dir,
            train=train,
            force=force,
            training_loss=loss,
            unlabeled_as=unlabeled_as,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if train:
        _train_and_compare(config, out, quiet)
        return
    try:
        result = run(config, progress=not quiet, keep_log=out / "worker.log")
    except (SimulationError, StackError, BrokerError) as exc:
        raise click.ClickException(str(exc)) from None
    report = write_report(result, out)
    comparison = compare(result.sessions, seed=seed)
    for name, rel in comparison.relative.items():
        diff = comparison.difference[name]
        click.echo(f"{name:>20}: NRT vs batch {rel.fmt(percent=True)} (difference {diff.fmt()})")
    click.echo(f"report: {report}  (wall time {result.wall_seconds:.0f} s)")


def _train_and_compare(config: SimulationConfig, out: Path, quiet: bool) -> None:
    """The trained run, then the same world with the heuristic and the same pause."""
    from dataclasses import replace

    from app.broker import BrokerError
    from app.simulation.report import compare_rankers, write_training_report
    from app.simulation.runner import SimulationError
    from app.simulation.runner import simulate as run
    from app.stack import StackError

    try:
        click.echo("run 1/2: warm-up with the heuristic, training, measured days")
        trained = run(config, progress=not quiet, keep_log=out / "trained" / "worker.log")
        if trained.training is not None and trained.training.report is not None:
            click.echo(trained.training.report.summary())
        elif trained.training is not None:
            click.echo(f"no model trained: {trained.training.error}")
        click.echo(f"run 2/2: the same world with the heuristic (pause {trained.pause:.1f} s)")
        baseline_config = replace(config, train=False, force=False, pause=trained.pause)
        baseline = run(
            baseline_config, progress=not quiet, keep_log=out / "heuristic" / "worker.log"
        )
    except (SimulationError, StackError, BrokerError) as exc:
        raise click.ClickException(str(exc)) from None
    report = write_training_report(trained, baseline, out)
    rankers = compare_rankers(baseline.sessions, trained.sessions, seed=config.world.seed)
    for arm, metrics in rankers.items():
        for name in ("dismiss_rate", "true_ndcg"):
            h, t, d = metrics[name]
            click.echo(
                f"{arm:>5} {name:>12}: heuristic {h.fmt()}  trained {t.fmt()}  diff {d.fmt()}"
            )
    click.echo(f"report: {report}")
