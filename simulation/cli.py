"""The ``nearline simulate`` command: options in, a report folder out.

The world's and the behaviour model's options are generated from their dataclasses' fields
(a help text each here, the default the field's); ``--loss`` and ``--force`` are the ones
``nearline train`` has (:mod:`nearline.app.training_options`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from nearline.app.training_options import force_option, loss_option
from nearline.simulation.behaviour import BehaviourModel
from nearline.simulation.world import WorldConfig

if TYPE_CHECKING:
    from nearline.simulation.runner import SimulationConfig, SimulationResult

__all__ = ["simulate"]

_BEHAVIOUR = "behaviour model (see simulation/behaviour.py)"

#: Help of the world's options by WorldConfig field; defaults are the fields'.
_WORLD_OPTIONS = {
    "days": "Measured simulated days.",
    "warmup_days": "Simulated days before the measurement in which every member gets fresh "
    "features (gives both arms a history); not counted in the results.",
    "members": "Members (split ~50/50).",
    "items": "Jobs in the catalogue.",
    "sessions_per_day": "Mean sessions per member per simulated day (Poisson).",
    "candidates": "Jobs the worker ranks per session.",
    "focus_changes_per_day": "Drift speed: focus changes (new job family) per member per "
    "simulated day. 0 = none.",
    "moves_per_day": "Moves to another city per member per simulated day. 0 = none.",
    "topics": "Job families (categories).",
    "cities": "Cities (geo regions).",
    "embedding_dim": "Item embedding dimension; the worker is started with "
    "NEARLINE_EMBEDDING_DIM set to it.",
    "seed": "Seed of the world and behaviour.",
}

#: Help of the behaviour model's options by BehaviourModel field, likewise.
_BEHAVIOUR_OPTIONS = {
    "interest_weight": "weight of cos.",
    "geo_weight": "same-city bonus.",
    "offset": "affinity offset.",
    "sharpness": "slope of the sigmoids.",
    "examine_decay": "P(examine rank r) = decay^r (position bias).",
    "dismiss_max": "P(dismiss | examined) for a hopeless match.",
    "click_max": "P(click | examined) for a perfect match.",
    "apply_given_click": "P(apply | click).",
    "save_given_click": "P(save | click, no apply).",
}

#: Flags that are not the field's name (``--warmup-days`` for ``warmup_days`` otherwise).
_FLAGS = {"focus_changes_per_day": "--drift", "moves_per_day": "--move-rate"}

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _field_options(
    config: type, helps: dict[str, str], context: str = ""
) -> Callable[[_Command], _Command]:
    """One click option per field named in ``helps`` (help text after ``context``), with the
    dataclass field's default: a default is stated once, where the parameter is defined."""
    defaults = {f.name: f.default for f in fields(config)}

    def apply(command: _Command) -> _Command:
        for name, help_text in reversed(helps.items()):
            flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
            option = click.option(
                flag, name, default=defaults[name], show_default=True, help=context + help_text
            )
            command = option(command)
        return command

    return apply


@click.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.md, the PNG plots, sessions.csv and the worker log.",
)
@_field_options(WorldConfig, _WORLD_OPTIONS)
@click.option("-k", "--k", "k", default=10, show_default=True, help="Top k shown per session.")
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
    help="A trained model directory for the worker (default: the heuristic ranker). The run "
    "starts experiment sim-SEED in it, so it must not have run that one before.",
)
@click.option(
    "--train",
    is_flag=True,
    help="Close the learning loop: train on the warm-up's logged outcomes through the "
    "promotion gate, rank the measured days with what it publishes, and run the same world "
    "with the heuristic to compare (two runs: twice the wall time).",
)
@force_option("With --train: ")
@loss_option("With --train: the training loss. ")
@click.option(
    "--unlabeled-as",
    type=click.Choice(["skip", "negative"]),
    default="skip",
    show_default=True,
    help="The worker's NEARLINE_UNLABELED_AS: skip = only jobs the member reacted to "
    "become examples; negative = every other logged job (the shown ones) is a negative.",
)
@_field_options(BehaviourModel, _BEHAVIOUR_OPTIONS, f"{_BEHAVIOUR}: ")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(
    out: Path,
    k: int,
    compression: float,
    model_dir: Path | None,
    train: bool,
    force: bool,
    loss: str,
    unlabeled_as: str,
    quiet: bool,
    **parameters: Any,
) -> None:
    """Does freshness pay? Run near-real-time vs daily-batch features through the real system.

    Starts an embedded broker and a `nearline worker`, loads a seeded synthetic job
    catalogue through the item-attributes topic, and plays members' sessions in compressed
    time: each session asks POST /v1/recommendations, draws the member's reactions from the
    behaviour model, and produces them to the actions topic. After the warm-up the arms run
    as an experiment through the worker (`nearline experiment`, fresh vs daily features, the
    day a simulated day). Writes OUT/report.md with the arms' results as `nearline
    experiment status` computes them (dismiss rate, positive rate, NDCG@10, MRR), the
    simulator's own session and ground-truth metrics (95 % cluster-bootstrap CIs), the change
    NRT vs batch beside the seed's figures, and daily plots.
    """
    from nearline.app.broker import BrokerError
    from nearline.app.stack import StackError
    from nearline.simulation.report import write_report
    from nearline.simulation.runner import SimulationConfig, SimulationError
    from nearline.simulation.runner import simulate as run
    from nearline.simulation.statistics import ARM_METRICS, compare, experiment_table

    if k > parameters["candidates"]:
        raise click.BadParameter("must not exceed --candidates", param_hint="--k")
    try:
        config = SimulationConfig(
            world=WorldConfig(**{name: parameters[name] for name in _WORLD_OPTIONS}),
            behaviour=BehaviourModel(**{name: parameters[name] for name in _BEHAVIOUR_OPTIONS}),
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
    if result.experiment is not None:
        for name, (_, _, diff, rel) in experiment_table(result.experiment).items():
            click.echo(
                f"{name:>20}: NRT vs batch {rel.fmt(percent=True)} (difference {diff.fmt()})"
            )
    comparison = compare(result.sessions, seed=config.world.seed)
    for name, rel in comparison.relative.items():
        if name in ARM_METRICS:
            continue  # the experiment's figure is above
        diff = comparison.difference[name]
        click.echo(f"{name:>20}: NRT vs batch {rel.fmt(percent=True)} (difference {diff.fmt()})")
    click.echo(f"report: {report}  (wall time {result.wall_seconds:.0f} s)")
    _warn_if_not_valid(result)


def _warn_if_not_valid(result: SimulationResult, run: str = "") -> None:
    """Say on the terminal, as the report does at its top, if the run tested nothing."""
    if (why := result.validity()) is not None:
        click.secho(
            f"Warning: {run}not a valid test of freshness: {why}. Run with a lower "
            "--compression or fewer --members.",
            err=True,
            fg="yellow",
        )


def _train_and_compare(config: SimulationConfig, out: Path, quiet: bool) -> None:
    """The trained run, then the same world with the heuristic and the same pause."""
    from dataclasses import replace

    from nearline.app.broker import BrokerError
    from nearline.app.stack import StackError
    from nearline.simulation.report import write_training_report
    from nearline.simulation.runner import SimulationError
    from nearline.simulation.runner import simulate as run
    from nearline.simulation.statistics import compare_rankers

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
    _warn_if_not_valid(trained, "run 1/2 (trained) was ")
    _warn_if_not_valid(baseline, "run 2/2 (heuristic) was ")
    report = write_training_report(trained, baseline, out)
    rankers = compare_rankers(baseline.sessions, trained.sessions, seed=config.world.seed)
    for arm, metrics in rankers.items():
        for name in ("dismiss_rate", "true_ndcg"):
            h, t, d = metrics[name]
            click.echo(
                f"{arm:>5} {name:>12}: heuristic {h.fmt()}  trained {t.fmt()}  diff {d.fmt()}"
            )
    click.echo(f"report: {report}")
