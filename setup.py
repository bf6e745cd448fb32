"""Package discovery: `compiler/` and `runtime/` install as graphflux.compiler and
graphflux.runtime (the folders show the architecture; nothing generic lands in site-packages),
and every subpackage under the three folders is found, so a new one is never left out of
`pip install .`. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

FOLDERS = {"graphflux": "graphflux", "graphflux.compiler": "compiler",
           "graphflux.runtime": "runtime"}

packages = [name for name in FOLDERS]
for name, folder in FOLDERS.items():
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=sorted(set(packages)),
      package_dir={k: v for k, v in FOLDERS.items() if k != v})
