"""Maps the repository's top-level directories onto one import namespace, `ctrpy`.

DESIGN.md lays the project out as `manager/`, `shim/` and `snapshotter/` at the top of the
repository, beside the shared `ctrpy/` package (generated API, errors, client, CLI). Installed,
they become `ctrpy.manager`, `ctrpy.shim` and `ctrpy.snapshotter`, so nothing but `ctrpy` lands
in site-packages. pyproject.toml cannot express a mapping plus discovery, hence this file.
"""

from setuptools import find_packages, setup

ROOTS = {
    "ctrpy": "ctrpy",
    "ctrpy.manager": "manager",
    "ctrpy.shim": "shim",
    "ctrpy.snapshotter": "snapshotter",
}

packages: list[str] = []
for package, directory in ROOTS.items():
    packages.append(package)
    packages.extend(f"{package}.{sub}" for sub in find_packages(directory))

setup(packages=packages, package_dir=ROOTS, package_data={"ctrpy": ["py.typed"]})
