"""The simulator's report: the experiment's numbers as Markdown, with daily plots.

``report.md`` beside ``daily_<metric>.png`` and ``sessions.csv`` for one run
(:func:`write_report`), and for ``nearline simulate --train`` both runs' reports and the
trained model against the heuristic (:func:`write_training_report`). The numbers are
:mod:`nearline.simulation.statistics`'; matplotlib is imported only when plots are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nearline.foundation.extras import requires_extra
from nearline.simulation.runner import SessionRecord, SimulationResult
from nearline.simulation.statistics import (
    ARM_METRICS,
    METRICS,
    Comparison,
    compare,
    compare_rankers,
    daily_series,
    experiment_table,
    members_needed,
    permutation_p_values,
)
from nearline.simulation.world import ARMS

__all__ = ["SEED_FIGURES", "write_report", "write_training_report"]

#: The seed's reported effect of near-real-time features, relative to daily batch.
SEED_FIGURES: dict[str, str] = {
    "dismiss_rate": "-20 % (job recommendation dismisses)",
    "engaged_sessions": "+0.68 % (engaged feed sessions)",
    "applies_per_session": "not reported",
    "true_ndcg": "not reported",
    "true_hr": "not reported",
    "true_mrr": "not reported",
}
#: The simulator's own metrics the report shows beside them (the machinery has the dismiss rate).
_OWN_METRICS = tuple(name for name in METRICS if name not in ARM_METRICS)


def _plot(result: SimulationResult, out: Path) -> list[Path]:
    with requires_extra("Plotting the simulator's report"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    series = daily_series(result.sessions)
    warmup = result.config.world.warmup_days
    paths = []
    for name, (_, _, label) in METRICS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for arm, style in (("nrt", "-o"), ("batch", "--s")):
            points = series[name][arm]  # type: ignore[index]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot([x + 1 for x in xs], ys, style, label=_ARM_LABEL[arm])  # type: ignore[index]
        if warmup:
            ax.axvspan(0.5, warmup + 0.5, color="0.9", label="warm-up (all fresh)")
        ax.set_xlabel("simulated day")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per simulated day")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"daily_{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


_ARM_LABEL: dict[str, str] = {
    "nrt": "near-real-time",
    "batch": "daily batch",
}


def _ingest_delay_line(result: SimulationResult) -> str:
    delays = sorted(result.ingest_delays)
    if not delays:
        return "* ingest delay: not sampled."
    median, worst = delays[len(delays) // 2], delays[-1]
    minutes = result.config.compression / 60
    return (
        "* ingest delay (how long the oldest unread action had waited at most, sampled each "
        "second, so 1 s means within a sample): "
        f"p50 {median:.1f} s, max {worst:.1f} s (= {median * minutes:.1f} and "
        f"{worst * minutes:.1f} simulated minutes)."
    )


def _markdown(result: SimulationResult, comparison: Comparison, plots: list[Path]) -> str:
    cfg = result.config
    w, b = cfg.world, cfg.behaviour
    level = f"{comparison.level:.0%}"
    measured = [r for r in result.sessions if r.measured]
    latencies = sorted(r.latency_s for r in result.sessions)
    late = sorted(r.late_s for r in result.sessions)
    versions = sorted({r.model_version for r in result.sessions})

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan

    lines = ["# Does freshness pay? Near-real-time vs daily-batch features", ""]
    if (why := result.validity()) is not None:
        lines += [
            f"> **Not a valid test of freshness:** {why}. Run it again with a lower "
            "`--compression` or fewer `--members` (see *Run health*).",
            "",
        ]
    lines += [
        f"Simulated {w.days} measured day(s) after {w.warmup_days} warm-up day(s), "
        f"{w.members} members, {w.items} jobs, seed {w.seed}. The real system served every "
        f"request: an embedded broker and one `nearline worker` process "
        f"(model `{', '.join(versions)}`). Wall time {result.wall_seconds:.0f} s.",
        "",
        "## Results",
        "",
        *_experiment_lines(result),
        "The simulator's own measures of the same sessions: what members did per session, "
        "and each shown list scored against the true click odds (known only here). "
        f"Intervals: {level} cluster bootstrap over members (members resampled with "
        "replacement within each arm, 2000 replicates, percentile).",
        "",
        "| metric | near-real-time | daily batch | NRT - batch | NRT vs batch | p | "
        "seed (LinkedIn) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    p_values = permutation_p_values(result.sessions, seed=cfg.world.seed)
    for name in _OWN_METRICS:
        label = METRICS[name][2]
        nrt = comparison.arms["nrt"].metrics[name]
        batch = comparison.arms["batch"].metrics[name]
        lines.append(
            f"| {label} | {nrt.fmt()} | {batch.fmt()} | {comparison.difference[name].fmt()} | "
            f"{comparison.relative[name].fmt(percent=True)} | {p_values[name]:.3f} | "
            f"{SEED_FIGURES[name]} |"
        )
    lines += [
        "",
        "| arm | members | sessions | impressions |",
        "| --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        s = comparison.arms[arm]
        lines.append(f"| {_ARM_LABEL[arm]} | {s.members} | {s.sessions} | {s.impressions} |")
    lines += [
        "",
        "An interval of the difference that contains 0 means this run cannot tell the arms "
        "apart on that metric. p: two-sided permutation test of the difference (arm labels "
        "re-drawn over members, 2000 permutations). The world is synthetic: these numbers "
        "test the mechanism (does the system turn fresh actions into better rankings?), "
        "not LinkedIn's members.",
        "",
        "## Plots",
        "",
    ]
    for path in plots:
        lines.append(f"![{path.stem}]({path.name})")
        lines.append("")
    lines += [
        "## Design",
        "",
        "* **Arms.** An experiment run through the worker like any other (`nearline "
        "experiment`): started after the warm-up, the worker assigns each member an arm by "
        "the experiment's stable hash of the member id. Near-real-time (`fresh`): features "
        "as they stream. Daily batch (`daily`): features as of the start of the current "
        "simulated day (the experiment's day is the simulated one), so actions since then "
        "are ignored. Same model, same candidates generator, same behaviour model.",
        f"* **Warm-up.** The first {w.warmup_days} simulated day(s) serve every member fresh "
        "features and are not measured, so both arms start with history (as a production "
        "system would before the test).",
        f"* **Sessions.** Poisson({w.sessions_per_day}) sessions per member per day at uniform "
        f"times; each asks the worker to rank {w.candidates} jobs drawn uniformly from the "
        f"catalogue and shows the top {cfg.k}. Reactions go to the actions topic (keyed by "
        "member) and flow back into the features.",
        f"* **Drift.** Focus changes per member per day: {w.focus_changes_per_day} "
        f"(Poisson; a new topic), moves per day: {w.moves_per_day} (a new city). This run: "
        f"{result.drift_events['focus']} focus changes, {result.drift_events['move']} moves.",
        "* **Behaviour model** (simulation/behaviour.py): affinity "
        f"a = {b.interest_weight}*cos(interest, job) + {b.geo_weight}*[same city] - {b.offset}; "
        f"examined at rank r with probability {b.examine_decay}^r (a `view`); then dismiss "
        f"with {b.dismiss_max}*sigmoid(-{b.sharpness}a), "
        f"click with {b.click_max}*sigmoid({b.sharpness}a); "
        f"after a click apply with {b.apply_given_click}, else save with {b.save_given_click}.",
        "",
        "## Time compression",
        "",
        f"Compression {cfg.compression:g}x: event timestamps are real wall-clock times, and the "
        "worker runs with every duration setting divided by the compression "
        "(wall = t0 + simulated / compression).",
        "",
        "| what | simulated | wall clock |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {s} | {c} |" for a, s, c in _mapping(cfg.compression)]
    lines += [
        "",
        "Not scaled: the vectorizer's recency half-life (6 h of wall time, not a setting), so "
        "under compression recent actions are weighted almost equally.",
        "",
        "## Run health",
        "",
        f"* sessions: {len(result.sessions)} ({len(measured)} measured); actions produced: "
        f"{result.actions_produced}; read by the worker: {result.actions_read:.0f}; "
        "applied: "
        f"{result.worker_metrics.get('nearline_events_applied_total', math.nan):.0f}; "
        "dead-lettered: "
        f"{result.worker_metrics.get('nearline_events_dead_lettered_total', math.nan):.0f}.",
        _ingest_delay_line(result),
        f"* recommendation latency (client side): p50 {pct(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(latencies, 0.99) * 1000:.1f} ms.",
        f"* schedule slip (session started late): p50 {pct(late, 0.5) * 1000:.0f} ms, max "
        f"{(late[-1] if late else 0) * 1000:.0f} ms "
        f"(= {(late[-1] if late else 0) * cfg.compression / 60:.1f} simulated minutes).",
        "",
        "## Parameters",
        "",
        "```",
        *_parameter_lines(result),
        "```",
        "",
    ]
    return "\n".join(lines)


def _experiment_lines(result: SimulationResult) -> list[str]:
    """The machinery's table: the arms as ``nearline experiment status`` reports them."""
    results = result.experiment
    if results is None:
        return ["No experiment results (the run ended before its experiment did).", ""]
    lines = [
        f"Measured days only. The worker served the arms as experiment "
        f"`{results.experiment.id}`; the outcomes join labelled every response, and these are "
        "the numbers `nearline experiment status` computes from the training-examples topic "
        f"(the same function): {results.level:.0%} intervals from a bootstrap over members.",
        "",
        "| metric | near-real-time | daily batch | NRT - batch | NRT vs batch | seed (LinkedIn) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (nrt, batch, diff, rel) in experiment_table(results).items():
        lines.append(
            f"| {ARM_METRICS[name]} | {nrt.fmt()} | {batch.fmt()} | {diff.fmt()} | "
            f"{rel.fmt(percent=True)} | {SEED_FIGURES.get(name, 'not reported')} |"
        )
    lines += [
        "",
        "| arm | members | responses | served | dismissed | positives | members' dismisses "
        "| members' clicks |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        a = results.arms[arm]
        t = a.totals
        made = [r for r in result.sessions if r.measured and r.arm == arm]
        lines.append(
            f"| {_ARM_LABEL[arm]} | {a.members} | {a.responses} | {int(t['impressions'])} | "
            f"{int(t['dismisses'])} | {int(t['positives'])} | "
            f"{sum(r.dismisses for r in made)} | {sum(r.clicks for r in made)} |"
        )
    lines += [
        "",
        "Dismissed and positives are what the outcomes join labelled; the last two columns "
        "are what the simulated members did (every apply and save follows a click). The join "
        "credits a reaction to the latest response that showed the item before it (last "
        "touch), so an item shown twice is counted once; the columns differ by the reactions "
        "the join did not see within a response's horizon.",
    ]
    return [*lines, ""]


def _mapping(compression: float) -> list[tuple[str, str, str]]:
    from nearline.simulation.timescale import TimeScale

    return TimeScale(compression).mapping_table()


def _parameter_lines(result: SimulationResult) -> list[str]:
    lines = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            lines.append(f"{prefix} = {value}")

    walk("", result.config.to_dict())
    for key, value in sorted(result.worker_env.items()):
        if key.startswith("NEARLINE_") and "PASSWORD" not in key and "TOKEN" not in key:
            lines.append(f"worker {key}={value}")
    return lines


def write_report(result: SimulationResult, out: Path, level: float = 0.95) -> Path:
    """Write ``report.md``, the plots and ``sessions.csv`` into ``out``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare(result.sessions, level=level, seed=result.config.world.seed)
    plots = _plot(result, out)
    _write_sessions(result.sessions, out / "sessions.csv")
    report = out / "report.md"
    report.write_text(_markdown(result, comparison, plots))
    return report


def _write_sessions(records: Sequence[SessionRecord], path: Path) -> None:
    fields = list(SessionRecord.__dataclass_fields__)
    with path.open("w") as f:
        f.write(",".join(fields) + "\n")
        for r in records:
            f.write(",".join(str(getattr(r, name)) for name in fields) + "\n")


def write_training_report(
    trained: SimulationResult, baseline: SimulationResult, out: Path, level: float = 0.95
) -> Path:
    """Both runs' own reports in ``out/trained`` and ``out/heuristic``, and ``out/report.md``
    with NRT vs batch under each ranker side by side and the trained model vs the heuristic."""
    out.mkdir(parents=True, exist_ok=True)
    write_report(trained, out / "trained", level)
    write_report(baseline, out / "heuristic", level)
    seed = trained.config.world.seed
    runs = {
        "heuristic": compare(baseline.sessions, level=level, seed=seed),
        "trained": compare(trained.sessions, level=level, seed=seed),
    }
    rankers = compare_rankers(baseline.sessions, trained.sessions, level=level, seed=seed)
    training = trained.training
    if training is not None:
        from nearline.model.dataset import write_examples

        write_examples(out / "trained" / "warmup-examples.parquet", training.data)
    cfg, w = trained.config, trained.config.world
    served = training.served_version if training else "?"
    pause_hours = trained.pause * cfg.compression / 3600.0
    lines = [
        "# Does the learning loop pay? Trained ranker vs heuristic, NRT vs daily batch",
        "",
        f"Two runs of the same world (seed {w.seed}: {w.members} members, {w.items} jobs, "
        f"{w.warmup_days} warm-up and {w.days} measured day(s), the same sessions and reaction "
        "draws). Both rank the warm-up with the heuristic. Then the *trained* run exports the "
        "worker's own training examples, trains a model and puts it through the promotion "
        f"gate; its measured days are ranked by `{served}` in both arms. The *heuristic* run "
        "ranks every day with the heuristic. The measured days start "
        f"{trained.pause:.1f} s of wall time ({pause_hours:.1f} simulated hours) after the "
        "warm-up in both runs (the time training took). Wall time "
        f"{trained.wall_seconds + baseline.wall_seconds:.0f} s.",
        "",
    ]
    if training is not None:
        lines += [
            "## Training and the gate",
            "",
            f"{training.examples} examples of {training.requests} warm-up responses "
            f"(unlabeled candidates: {cfg.unlabeled_as}), {training.seconds:.1f} s (export, "
            "training, the worker switching). The examples are in "
            "`trained/warmup-examples.parquet` (`nearline train --compare-losses` reads them).",
            "",
        ]
        if training.report is not None:
            lines += ["```", training.report.summary(), "```", ""]
        else:
            lines += [f"No model could be trained: {training.error}", ""]
        if not training.published:
            lines += [
                "No model was published, so the *trained* run's measured days were ranked "
                "by the heuristic too: the two runs differ only by chance and timing.",
                "",
            ]
    level_text = f"{level:.0%}"
    lines += [
        "## NRT vs batch under each ranker",
        "",
        f"Measured days; {level_text} cluster-bootstrap intervals over members.",
        "",
        "| metric | heuristic: NRT | heuristic: batch | heuristic: NRT vs batch | "
        "trained: NRT | trained: batch | trained: NRT vs batch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (_, _, label) in METRICS.items():
        cells = []
        for run in ("heuristic", "trained"):
            c = runs[run]
            cells += [
                c.arms["nrt"].metrics[name].fmt(),
                c.arms["batch"].metrics[name].fmt(),
                c.relative[name].fmt(percent=True),
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Trained model vs heuristic",
        "",
        f"Same members in both runs: {level_text} paired cluster bootstrap over members.",
        "",
        "| metric | arm | heuristic | trained | trained - heuristic |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (_, _, label) in METRICS.items():
        for arm in ARMS:
            h, t, d = rankers[arm][name]
            lines.append(f"| {label} | {_ARM_LABEL[arm]} | {h.fmt()} | {t.fmt()} | {d.fmt()} |")
    lines += ["", "## Is it big enough?", ""]
    for run in ("heuristic", "trained"):
        c = runs[run]
        d = c.difference["dismiss_rate"]
        members = c.arms["nrt"].members
        if d.low > 0 or d.high < 0:
            lines.append(
                f"* {run}: the NRT - batch dismiss-rate difference {d.fmt()} excludes 0 "
                f"with {members} members per arm."
            )
        else:
            needed = members_needed(members, d)
            lines.append(
                f"* {run}: the NRT - batch dismiss-rate difference {d.fmt()} includes 0 with "
                f"{members} members per arm; at this effect size about "
                f"{needed:,.0f} members per arm would exclude it."
            )
    lines += [
        "",
        "Ground-truth metrics: the simulator knows every candidate's true P(click | examined), "
        "so NDCG@k uses it as the gain of each shown job, and HR@k / MRR look for the single "
        "best candidate in the shown list: the rankers are judged on every candidate, not only "
        "on what the logged clicks reveal.",
        "",
        "Each run's own report: [trained](trained/report.md), [heuristic](heuristic/report.md).",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
