"""The wheel installs one namespace, ``nearline.*``, beside a project with its own ``app``.

It is built from what ``.dockerignore`` lets into the image's build context, so the
allow-list is checked too. The fresh venv sees the dev venv's dependencies through a path
file but not its editable install of nearline (site-packages named in a path file is added
without processing the path files in it), so every ``nearline`` import comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).parents[2]


def run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def build_context(into: Path) -> Path:
    """A copy of what the Docker build context holds: the ``!`` entries of .dockerignore."""
    allowed = [
        line[1:].strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")
    into.mkdir()
    for name in allowed:
        source = REPO / name
        if source.is_symlink() or source.is_file():
            shutil.copy2(source, into / name, follow_symlinks=False)
        elif source.is_dir():
            # symlinks=True: nearline/'s links to the package folders stay links, as in Docker.
            shutil.copytree(source, into / name, symlinks=True, ignore=skip)
    return into


def test_the_wheel_installs_beside_a_project_with_its_own_app(tmp_path: Path) -> None:
    source = build_context(tmp_path / "src")
    run(
        sys.executable,
        *("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
        *("-w", tmp_path / "dist", source),
    )
    (wheel,) = (tmp_path / "dist").glob("nearline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        members = archive.infolist()
    names = {member.filename for member in members}
    links = [m.filename for m in members if stat.S_ISLNK(m.external_attr >> 16)]
    assert not links, f"the wheel holds links, not files: {links}"
    tops = {name.split("/")[0] for name in names}
    assert tops == {"nearline", wheel.name.split("-py")[0] + ".dist-info"}, tops
    for needed in (
        "nearline/app/worker.py",
        "nearline/foundation/extras.py",
        "nearline/app/console/static/console.html",
        "nearline/app/console/static/console.js",
        "nearline/app/console/static/console.css",
    ):
        assert needed in names, f"{needed} is missing from the wheel"

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    fresh = Path(run(python, "-c", purelib).strip())
    (fresh / "dev-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # pip comes from the dev venv; --ignore-installed: its editable nearline is not this one.
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", wheel)

    project = tmp_path / "project"
    for package in ("app", "model"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"OWNER = 'the project: {package}'\n")
    check = f"""
from importlib import resources
import app, model, nearline, nearline.app.worker, nearline.app.console.routes
assert app.OWNER == "the project: app" and model.OWNER == "the project: model"
assert nearline.__file__.startswith({str(fresh)!r}), nearline.__file__
assert nearline.app.worker.__file__.startswith({str(fresh)!r}), nearline.app.worker.__file__
assert (resources.files("nearline.app.console") / "static" / "console.html").is_file()
"""
    run(python, "-c", check, cwd=project)
    assert "Usage: nearline" in run(venv / "bin" / "nearline", "--help", cwd=project)
