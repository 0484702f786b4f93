"""The oldest versions kvbench declares, run: transformers (and accelerate) at the floor pyproject.toml
names, and the last transformers 4 release (the suite's venv runs 5), installed beside this venv's torch,
measuring a tiny GPT-2 end to end from the command line. The
install is kept in a cache folder named for the versions, so only the first run pays for it; where it
cannot happen (no network), the test is skipped with the reason."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from kvbench.model.experiment import tomllib  # tomli before Python 3.11
from tests.conftest import _save_model
from tests.test_gpu_workflow_install import ONLY_INSTALLED, installed_by

pytestmark = pytest.mark.floor

REPO = Path(__file__).resolve().parent.parent
# The floors installed here. torch stays this venv's (its CPU build); the command-line floors (typer,
# rich) and the data ones (pandas, scipy, matplotlib) would pull numpy 1 builds that torch's may not load.
FLOORED = ("transformers", "accelerate")
# pip --target ignores what is installed: accelerate's own dependencies would bring a CUDA torch, so it comes
# alone and uses this venv's torch, numpy and the rest. transformers brings the hub client and tokenizers
# its floor needs (older than this venv's).
WITHOUT_DEPENDENCIES = {"accelerate"}
# Besides the floor: the last transformers 4 minor, whose AutoTokenizer fails on a directory without
# tokenizer files with an ImportError (protobuf) where 4.56 and 5 raise OSError.
LAST_TRANSFORMERS_4 = "4.57.0"


def declared_floors() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        for specifier in requirement.specifier:
            if specifier.operator == ">=" and requirement.name in FLOORED:
                floors[requirement.name] = specifier.version
    assert set(floors) == set(FLOORED), f"pyproject.toml no longer declares a floor for {set(FLOORED) - set(floors)}"
    return floors


def cache_root() -> Path:
    base = os.environ.get("KVBENCH_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvbench-tests"
    )
    return Path(base)


def pip_install(target: Path, specs: list[str], *extra: str) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--target",
            str(target),
            *extra,
            *specs,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines() or [f"exit code {completed.returncode}"]
        pytest.skip(f"cannot install the floor versions {' '.join(specs)}: {lines[-1]}")


@pytest.fixture(scope="module", params=["declared floors", "last transformers 4"])
def floor_packages(request) -> tuple[Path, dict[str, str]]:
    """A folder of the floor versions (and what they need that this venv has too new), made once per set
    of versions: built aside and renamed into place, so a failed or concurrent install is never reused."""
    floors = declared_floors()
    if request.param == "last transformers 4":
        floors["transformers"] = LAST_TRANSFORMERS_4
    specs = sorted(f"{name}=={version}" for name, version in floors.items())
    key = hashlib.sha256(f"{sys.version_info[:2]} {specs}".encode()).hexdigest()[:12]
    folder = cache_root() / f"floor-{key}"
    if not (folder / "complete").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="building-", dir=folder.parent))
        try:
            pip_install(building, [spec for spec in specs if spec.split("==")[0] not in WITHOUT_DEPENDENCIES])
            pip_install(building, [spec for spec in specs if spec.split("==")[0] in WITHOUT_DEPENDENCIES], "--no-deps")
            (building / "complete").write_text("\n".join(specs) + "\n")
            try:
                building.rename(folder)
            except OSError:  # another run finished first: its folder is the same install
                pass
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return folder, floors


def floor_environment(folder: Path) -> dict[str, str]:
    # The floor packages first, so they shadow this venv's newer ones; kvbench from this checkout.
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]), "OMP_NUM_THREADS": "1"}


def test_the_floor_versions_are_the_ones_imported(floor_packages):
    folder, floors = floor_packages
    script = "import json, transformers, accelerate; print(json.dumps([transformers.__version__, accelerate.__version__]))"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=floor_environment(folder), timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    imported = json.loads(completed.stdout)
    assert [Version(version) for version in imported] == [Version(floors["transformers"]), Version(floors["accelerate"])]


def test_a_gpt2_without_tokenizer_files_is_measured_at_the_floor_versions(floor_packages, tmp_path):
    from transformers import GPT2Config

    folder, floors = floor_packages
    model = _save_model(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64), tmp_path / "gpt2")
    output = tmp_path / "floor.json"
    # Only what `pip install kvbench` brings is importable, as in a fresh venv (the floor install's folder
    # holds what the older versions need): protobuf, which this venv has for other packages, is not among it.
    installed = installed_by(["."]) | {
        canonicalize_name(Path(entry).name.split("-")[0]) for entry in folder.glob("*.dist-info")
    }
    only_kvbench = ONLY_INSTALLED + "from kvbench.cli import main; sys.argv = ['kvbench', *sys.argv[2:]]; main()"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            only_kvbench,
            json.dumps(sorted(installed)),
            "run",
            "--model",
            str(model),
            "--max-new-tokens",
            "4",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--no-device-peaks",
            "--no-memory-sampling",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        env=floor_environment(folder),
        cwd=tmp_path,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(output.read_text())
    assert Version(result["environment"]["transformers"]) == Version(floors["transformers"])
    assert [cell["status"] for cell in result["cells"]] == ["measured"]
    assert any("no tokenizer" in note for note in result["notes"])
