"""`pip install .` (the README's first command) ships every module: each .py file under
graphflux/, compiler/ and runtime/ is in the wheel, under graphflux/, graphflux/compiler/ and
graphflux/runtime/, and so is the bundled data set. A subpackage added later is found by
setup.py's discovery, never silently left out."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"graphflux": "graphflux", "compiler": "graphflux/compiler",
           "runtime": "graphflux/runtime"}


def test_the_wheel_holds_every_module_and_the_data(tmp_path):
    source = tmp_path / "src"         # a clean copy: a stale build/ folder would hide a miss
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".git", ".hypothesis"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path / "dist"), str(source)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("graphflux-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{inside}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, inside in FOLDERS.items()
                for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts}
    assert expected - names == set()
    assert "graphflux/datasets/digits.npz" in names
    assert len(expected) > 60
