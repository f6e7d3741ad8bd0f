"""Versioned model files in ``model_dir`` and the active ranker a worker serves with.

A version is two files: ``nearline-model-<version>.pt`` (state_dict and architecture) and
``nearline-model-<version>.json`` (feature names, vectorizer config, training range,
metrics, created_at). The JSON is written last, by atomic rename, so a version exists for
readers only once both files are complete. Versions sort as strings; generated versions
are UTC timestamps, so the greatest is the newest.

Which version is served is ``nearline-active.json``: the version (or the heuristic) and the
ones served before it, newest first, so ``rollback`` knows the way back. ``nearline train``
writes it when a version passes the promotion gate (a refused version is saved with
``"status": "rejected"`` and never served unless activated by hand). Without that file a
worker serves the newest version not marked rejected, as before the file existed.

The running experiment, if any, is ``nearline-experiment.json`` beside it, followed the
same way: :attr:`ModelRegistry.experiment` holds its arms' rankers (see
:mod:`nearline.model.experiments`).

Importing this module does not import torch: a worker that serves the heuristic never
loads it (~225 MB of RSS saved). :mod:`nearline.model.scorer`, and torch with it, is imported by
the methods that write, read or serve a trained version, the first time one is used.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from nearline.foundation.extras import requires_extra
from nearline.model.exceptions import IncompatibleModelError, ModelFileError
from nearline.model.experiments import (
    EXPERIMENT_FILE,
    Arm,
    Assigner,
    Experiment,
    ExperimentError,
    read_experiment,
)
from nearline.model.heuristic import HEURISTIC_VERSION, HeuristicRanker
from nearline.model.ranker import Ranker
from nearline.model.scorer_config import Backend, ScorerConfig, configure_threads
from nearline.model.vectorizer import Vectorizer, VectorizerConfig

if TYPE_CHECKING:
    from nearline.model.scorer import Scorer

__all__ = [
    "ACTIVE_FILE",
    "FORMAT",
    "Assignment",
    "ModelRegistry",
    "ModelVersion",
    "Served",
    "ServedExperiment",
    "new_version",
]

log = logging.getLogger(__name__)

FORMAT = 1
_PREFIX = "nearline-model-"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_METADATA = re.compile(rf"^{_PREFIX}(?P<version>[A-Za-z0-9][A-Za-z0-9._-]*)\.json$")
ACTIVE_FILE = "nearline-active.json"
#: Earlier served versions kept in the active file for rollback.
_HISTORY = 20


def new_version(now: float | None = None) -> str:
    """``20251129T031500123456Z-1a2b``: sortable by time, unique across writers."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return f"{moment:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class ModelVersion:
    """A version found in ``model_dir``: its name and its metadata."""

    version: str
    weights: Path
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Served:
    """What the active file says: the served version and, newest first, those before it."""

    version: str
    previous: tuple[str, ...] = ()
    pinned: bool = True  # False: no active file, the newest unrejected version is served


@dataclass(frozen=True)
class Assignment:
    """A member's arm of the running experiment and the ranker that serves it."""

    experiment: str
    arm: Arm
    ranker: Ranker
    #: The features-as-of time of a "daily" arm's request at a time (the experiment's day).
    cutoff: Callable[[float], float]


@dataclass(frozen=True)
class ServedExperiment:
    """The running experiment as a worker serves it: its arms' rankers, ``None`` for an arm
    whose version cannot be served (the default ranker serves it instead)."""

    experiment: Experiment
    assigner: Assigner
    rankers: tuple[Ranker | None, ...]
    mtimes: tuple[int, ...]  # the versions' metadata mtimes the rankers were loaded from


class ModelRegistry:
    """Reads and writes model versions; holds the :class:`Ranker` requests score with.

    ``active`` is replaced by a single attribute assignment, so a request that read it
    keeps a complete ranker to the end, and the next request sees the new one. Until a
    compatible model is loaded, ``active`` is the heuristic.
    """

    def __init__(
        self,
        model_dir: Path | str | None,
        vectorizer: Vectorizer,
        backend: Backend = "auto",
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            configure_threads(threads)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.vectorizer = vectorizer
        self.backend: Backend = backend
        self.active: Ranker = HeuristicRanker(vectorizer.feature_names)
        #: The metadata of the active version (metrics, training range); empty for the heuristic.
        self.active_metadata: Mapping[str, Any] = {}
        self._lock = threading.Lock()
        self._listing: frozenset[tuple[str, int]] | None = None
        self._refused: set[tuple[str, int]] = set()
        #: The running experiment, replaced by one assignment like ``active``.
        self.experiment: ServedExperiment | None = None

    # -- writing ---------------------------------------------------------------------------

    def save(
        self,
        scorer: Scorer,
        metadata: Mapping[str, Any],
        version: str | None = None,
    ) -> ModelVersion:
        """Write a new version (weights first, metadata last) and return it."""
        with requires_extra("Saving a model"):
            import torch

        directory = self._require_dir()
        directory.mkdir(parents=True, exist_ok=True)
        version = version or new_version()
        if not _VERSION.match(version):
            raise ValueError(f"model version {version!r} must match {_VERSION.pattern}")
        weights, meta_path = self._paths(version)
        if meta_path.exists():
            raise FileExistsError(f"model version {version} already exists in {directory}")
        body = {
            "format": FORMAT,
            "scorer_config": scorer.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in scorer.state_dict().items()},
        }
        _atomic_write(weights, lambda f: torch.save(body, f))
        full = {
            **metadata,
            "format": FORMAT,
            "version": version,
            "feature_names": list(self.vectorizer.feature_names),
            "vectorizer": self.vectorizer.config.to_dict(),
            "scorer_config": scorer.config.to_dict(),
            "created_at": metadata.get("created_at", time.time()),
        }
        payload = orjson.dumps(full, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        _atomic_write(meta_path, lambda f: f.write(payload))
        log.info("model %s written to %s", version, directory)
        return ModelVersion(version, weights, full)

    # -- reading ---------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Every complete version in ``model_dir``, oldest first."""
        return sorted(version for version, _ in self._scan())

    def read(self, version: str) -> tuple[Scorer, dict[str, Any]]:
        """The scorer and metadata of one version; raises if incompatible or unreadable."""
        weights, meta_path = self._paths(version)
        try:
            metadata = orjson.loads(meta_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ModelFileError(f"cannot read {meta_path}: {exc}") from exc
        self.check_compatible(metadata, source=str(meta_path))
        with requires_extra("A trained model"):
            import torch  # here, not at the top: a worker serving the heuristic never loads it

        from nearline.model.scorer import Scorer

        try:
            body = torch.load(weights, map_location="cpu", weights_only=True)
            config = ScorerConfig.from_dict(body["scorer_config"])
            scorer = Scorer(config)
            scorer.load_state_dict(body["state_dict"])
        except Exception as exc:  # any failure here means the file is unusable
            raise ModelFileError(f"cannot load weights {weights}: {exc}") from exc
        if config.n_features != len(self.vectorizer.feature_names):
            raise IncompatibleModelError(
                f"{weights}: the network takes {config.n_features} features, "
                f"the vectorizer produces {len(self.vectorizer.feature_names)}"
            )
        scorer.eval()
        return scorer, metadata

    def check_compatible(self, metadata: Mapping[str, Any], source: str = "model") -> None:
        """Refuse a model trained on other features than this vectorizer produces."""
        expected = list(self.vectorizer.feature_names)
        found = list(metadata.get("feature_names") or [])
        if found != expected:
            missing = [n for n in expected if n not in found]
            extra = [n for n in found if n not in expected]
            detail = (
                f"missing {missing[:5]}, unexpected {extra[:5]}"
                if missing or extra
                else "same names in another order"
            )
            raise IncompatibleModelError(
                f"{source}: feature_names do not match the running vectorizer ({detail}); "
                "retrain on examples produced with this configuration"
            )
        config = metadata.get("vectorizer")
        if config is not None and VectorizerConfig.from_dict(config) != self.vectorizer.config:
            raise IncompatibleModelError(
                f"{source}: vectorizer config {config} differs from the running one "
                f"{self.vectorizer.config.to_dict()}"
            )

    def load(self, version: str) -> Ranker:
        """Load one version and make it active."""
        from nearline.model.scorer import TorchRanker

        scorer, metadata = self.read(version)
        ranker = TorchRanker(scorer, version, self.vectorizer.feature_names, self.backend)
        self.active_metadata = metadata
        self.active = ranker  # the swap: one reference assignment
        log.info("model %s active (backend %s)", version, ranker.backend)
        return ranker

    def load_latest(self) -> Ranker:
        """Activate the served version: the active file's, else the newest unrejected one;
        the heuristic if there is none.

        Incompatible or unreadable versions are logged and skipped, so a bad file falls back
        to the one served before it (the active file's history, or the next older version).
        """
        with self._lock:
            listing = self._scan()
            self._listing = self._snapshot(listing)
            self._follow_experiment(listing)
            for version, mtime in self._candidates(listing):
                if version == HEURISTIC_VERSION:
                    return self._serve_heuristic()
                try:
                    return self.load(version)
                except (IncompatibleModelError, ModelFileError) as exc:
                    self._refused.add((version, mtime))
                    log.error("model %s refused: %s", version, exc)
            return self.active

    def maybe_reload(self) -> bool:
        """Follow the active file (or a newer version) and the experiment file; True if the
        active ranker changed.

        Costs one directory listing when nothing changed. A version that cannot be used is
        logged once and the current ranker is kept.
        """
        if self.model_dir is None:
            return False
        with self._lock:
            listing = self._scan()
            snapshot = self._snapshot(listing)
            if snapshot == self._listing:
                return False
            self._listing = snapshot
            self._follow_experiment(listing)
            current = self.active.version
            for version, mtime in self._candidates(listing):
                if (version, mtime) in self._refused:
                    continue
                if version == current:
                    return False
                if version == HEURISTIC_VERSION:
                    self._serve_heuristic()
                    return True
                try:
                    self.load(version)
                    return True
                except (IncompatibleModelError, ModelFileError) as exc:
                    self._refused.add((version, mtime))
                    log.error("model %s refused, keeping %s: %s", version, current, exc)
            return False

    # -- experiments -----------------------------------------------------------------------

    def assign(self, member_id: str) -> Assignment | None:
        """The member's arm of the running experiment, if one runs."""
        served = self.experiment  # read once, like ``active``
        if served is None:
            return None
        index = served.assigner.index(member_id)
        ranker = served.rankers[index]
        return Assignment(
            served.experiment.id,
            served.experiment.arms[index],
            self.active if ranker is None else ranker,
            served.experiment.cutoff,
        )

    def read_experiment(self) -> Experiment | None:
        """The experiment of the model directory: running, or the last one stopped."""
        return read_experiment(self._require_dir())

    def start_experiment(self, experiment: Experiment) -> None:
        """Run ``experiment``: workers follow within NEARLINE_MODEL_RELOAD_INTERVAL.

        Refused while another runs (one experiment at a time: a member in two would make
        both unreadable), or if an arm's version is not one every worker could load.
        """
        experiment.check()
        current = self.read_experiment()
        if current is not None and current.running:
            raise ExperimentError(
                f"experiment {current.id} is running; one experiment runs at a time: "
                "stop or promote it first (`nearline experiment stop`)"
            )
        if current is not None and current.id == experiment.id:
            raise ExperimentError(
                f"experiment {experiment.id} ran before: its outcomes would be counted with "
                "this one's; give the new experiment a new id"
            )
        versions = self.versions()
        for arm in experiment.arms:
            if arm.version == HEURISTIC_VERSION:
                continue
            if arm.version not in versions:
                raise ExperimentError(
                    f"arm {arm.name}: no model version {arm.version!r} in "
                    f"{self._require_dir()} (`nearline model list` shows them)"
                )
            self.read(arm.version)  # refuse now what the workers would refuse later
        self._write_experiment(experiment)
        log.info("experiment %s started: %s", experiment.id, _describe(experiment.arms))

    def stop_experiment(self, promoted: str | None = None) -> Experiment:
        """End the running experiment; every member gets the default ranker again."""
        current = self.read_experiment()
        if current is None or not current.running:
            raise ExperimentError("no experiment is running")
        stopped = replace(current, stopped_at=time.time(), promoted=promoted)
        self._write_experiment(stopped)
        log.info("experiment %s stopped", current.id)
        return stopped

    def _write_experiment(self, experiment: Experiment) -> None:
        directory = self._require_dir()
        directory.mkdir(parents=True, exist_ok=True)
        payload = orjson.dumps(experiment.to_dict(), option=orjson.OPT_INDENT_2)
        _atomic_write(directory / EXPERIMENT_FILE, lambda f: f.write(payload))

    def _follow_experiment(self, listing: list[tuple[str, int]]) -> None:
        """Serve the experiment file as it is now (called with the lock held, on a change).

        An arm whose version is gone or cannot be loaded is served by the default ranker,
        logged with the reason: a member in that arm still gets an answer, never an error.
        """
        try:
            experiment = read_experiment(self.model_dir) if self.model_dir else None
        except ExperimentError as exc:
            log.error("%s; the experiment is not served", exc)
            experiment = None
        previous = self.experiment
        if experiment is None or not experiment.running:
            if previous is not None:
                log.info(
                    "experiment %s ended: the default ranker serves everyone",
                    previous.experiment.id,
                )
            self.experiment = None
            return
        mtimes = dict(listing)
        loaded: dict[tuple[str, int], Ranker] = {}
        if previous is not None:
            for arm, ranker, mtime in zip(
                previous.experiment.arms, previous.rankers, previous.mtimes, strict=True
            ):
                if ranker is not None:
                    loaded[(arm.version, mtime)] = ranker
        rankers: list[Ranker | None] = []
        for arm in experiment.arms:
            mtime = mtimes.get(arm.version, 0)
            ranker = loaded.get((arm.version, mtime))
            rankers.append(
                ranker if ranker is not None else self._arm_ranker(experiment, arm, mtime)
            )
        served = ServedExperiment(
            experiment,
            Assigner(experiment),
            tuple(rankers),
            tuple(mtimes.get(arm.version, 0) for arm in experiment.arms),
        )
        if previous is None or previous.experiment != experiment:
            log.info("experiment %s served: %s", experiment.id, _describe(experiment.arms))
        self.experiment = served

    def _arm_ranker(self, experiment: Experiment, arm: Arm, mtime: int) -> Ranker | None:
        if arm.version == HEURISTIC_VERSION:
            return HeuristicRanker(self.vectorizer.feature_names)
        if not mtime:
            log.error(
                "experiment %s arm %s: model version %s is gone from %s; the arm is served "
                "by the default ranker",
                experiment.id,
                arm.name,
                arm.version,
                self.model_dir,
            )
            return None
        from nearline.model.scorer import TorchRanker

        try:
            scorer, _ = self.read(arm.version)
        except (IncompatibleModelError, ModelFileError) as exc:
            log.error(
                "experiment %s arm %s: model version %s cannot be served (%s); the arm is "
                "served by the default ranker",
                experiment.id,
                arm.name,
                arm.version,
                exc,
            )
            return None
        return TorchRanker(scorer, arm.version, self.vectorizer.feature_names, self.backend)

    def _serve_heuristic(self) -> Ranker:
        if not isinstance(self.active, HeuristicRanker):
            self.active_metadata = {}
            self.active = HeuristicRanker(self.vectorizer.feature_names)
            log.info("heuristic ranker active")
        return self.active

    def _candidates(self, listing: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Versions to try serving, in order: the active file's version and its history,
        or without the file every version not marked rejected, newest first. Nothing if
        the active file is unreadable (logged): the current ranker stays."""
        try:
            served = self.served()
        except ModelFileError as exc:
            log.error("%s", exc)
            return []
        mtimes = dict(listing)
        if served.pinned:
            order = [served.version, *served.previous]
            return [(v, mtimes.get(v, 0)) for v in order if v == HEURISTIC_VERSION or v in mtimes]
        return [(v, m) for v, m in sorted(listing, reverse=True) if not self._rejected(v)]

    def _rejected(self, version: str) -> bool:
        try:
            return bool(self.metadata(version).get("status") == "rejected")
        except ModelFileError:
            return False  # unreadable: refused with its reason when it is tried

    # -- what is served: activate, rollback --------------------------------------------------

    def metadata(self, version: str) -> dict[str, Any]:
        """The metadata of one version, unchecked."""
        _, meta_path = self._paths(version)
        try:
            body = orjson.loads(meta_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ModelFileError(f"cannot read {meta_path}: {exc}") from exc
        if not isinstance(body, dict):
            raise ModelFileError(f"{meta_path} does not hold a JSON object")
        return body

    def served(self) -> Served:
        """The version workers serve (from the active file, or the newest unrejected one)."""
        if self.model_dir is not None:
            path = self.model_dir / ACTIVE_FILE
            try:
                body = orjson.loads(path.read_bytes())
                return Served(str(body["version"]), tuple(str(v) for v in body["previous"]))
            except FileNotFoundError:
                pass
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise ModelFileError(
                    f"cannot read {path}: {exc}; fix it with `nearline model activate VERSION`"
                ) from exc
        unrejected = [v for v in reversed(self.versions()) if not self._rejected(v)]
        return Served(unrejected[0] if unrejected else HEURISTIC_VERSION, pinned=False)

    def activate(self, version: str, current: Served | None = None) -> Served:
        """Serve ``version`` (or ``heuristic-v1``) from now on; workers follow within
        NEARLINE_MODEL_RELOAD_INTERVAL. The version must load with this vectorizer.

        ``current`` is what was served before (default: what is served now); a trainer
        that has just saved ``version`` passes what it gated against.
        """
        if version != HEURISTIC_VERSION:
            if version not in self.versions():
                raise ModelFileError(
                    f"no model version {version!r} in {self._require_dir()} "
                    "(`nearline model list` shows them)"
                )
            self.read(version)  # refuse now what the workers would refuse later
        current = current or self.served()
        previous = (current.version, *current.previous) if current.version != version else ()
        served = Served(version, tuple(v for v in previous if v != version)[:_HISTORY])
        self._write_served(served)
        return served

    def rollback(self) -> Served:
        """Serve again the version served before the current one."""
        current = self.served()
        if not current.previous:
            raise ModelFileError(
                f"nothing to roll back to: {current.version} is the only version served so far "
                "(`nearline model activate VERSION` serves another)"
            )
        served = Served(current.previous[0], current.previous[1:])
        self._write_served(served)
        return served

    def _write_served(self, served: Served) -> None:
        directory = self._require_dir()
        directory.mkdir(parents=True, exist_ok=True)
        payload = orjson.dumps(
            {"version": served.version, "previous": list(served.previous), "at": time.time()},
            option=orjson.OPT_INDENT_2,
        )
        _atomic_write(directory / ACTIVE_FILE, lambda f: f.write(payload))
        log.info("model %s now served (before: %s)", served.version, ", ".join(served.previous))

    def served_ranker(self) -> Ranker:
        """A ranker for the served version (the heuristic for ``heuristic-v1``)."""
        version = self.served().version
        if version == HEURISTIC_VERSION:
            return HeuristicRanker(self.vectorizer.feature_names)
        from nearline.model.scorer import TorchRanker

        scorer, _ = self.read(version)
        return TorchRanker(scorer, version, self.vectorizer.feature_names, "default")

    # -- files -----------------------------------------------------------------------------

    def _require_dir(self) -> Path:
        if self.model_dir is None:
            raise ModelFileError("no model directory configured (NEARLINE_MODEL_DIR)")
        return self.model_dir

    def _paths(self, version: str) -> tuple[Path, Path]:
        directory = self._require_dir()
        return (
            directory / f"{_PREFIX}{version}.pt",
            directory / f"{_PREFIX}{version}.json",
        )

    def _snapshot(self, listing: list[tuple[str, int]]) -> frozenset[tuple[str, int]]:
        """The listing plus the active and experiment files' mtimes: a change to any means
        look again."""
        if self.model_dir is None:
            return frozenset(listing)
        try:
            # Inode too: the file is replaced by rename, and two writes can share an mtime.
            stat = os.stat(self.model_dir / ACTIVE_FILE)
            active = (ACTIVE_FILE, stat.st_ino * 10**20 + stat.st_mtime_ns)
        except FileNotFoundError:
            active = (ACTIVE_FILE, 0)
        try:
            stat = os.stat(self.model_dir / EXPERIMENT_FILE)
            experiment = (EXPERIMENT_FILE, stat.st_ino * 10**20 + stat.st_mtime_ns)
        except FileNotFoundError:
            experiment = (EXPERIMENT_FILE, 0)
        return frozenset([*listing, active, experiment])

    def _scan(self) -> list[tuple[str, int]]:
        """(version, metadata mtime) of every version whose metadata and weights exist."""
        if self.model_dir is None:
            return []
        try:
            entries = list(os.scandir(self.model_dir))
        except FileNotFoundError:
            return []
        names = {entry.name for entry in entries}
        found = []
        for entry in entries:
            match = _METADATA.match(entry.name)
            if match and f"{_PREFIX}{match['version']}.pt" in names:
                try:
                    found.append((match["version"], entry.stat().st_mtime_ns))
                except FileNotFoundError:
                    continue  # deleted between listing and stat
        return found


def _describe(arms: tuple[Arm, ...]) -> str:
    return ", ".join(f"{a.name}={a.version}/{a.features}/{a.share:g}" for a in arms)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
