"""Package discovery that pyproject.toml cannot express on its own.

The kopf operator lives in the folder `operator/` but must never be importable as
`operator` (that name is Python's standard library). It installs as `mailwarden_operator`,
subpackages included; every other component installs under its own folder name.
`tests/operator/test_packaging.py` fails when this mapping misses a module.
"""

from setuptools import find_packages, setup

OPERATOR_DIR = "operator"
OPERATOR_PACKAGE = "mailwarden_operator"
# One folder per component (see README.md, "Layout"); all ship in the one distribution,
# and the extras decide which of them have their dependencies installed.
COMPONENTS = ("mailwarden", "filter_server", "unsubscribe_store", "mailwarden_local")

packages = find_packages(include=[pattern for name in COMPONENTS
                                  for pattern in (name, f"{name}.*")])
packages += [OPERATOR_PACKAGE] + [f"{OPERATOR_PACKAGE}.{name}"
                                  for name in find_packages(OPERATOR_DIR)]

setup(packages=packages, package_dir={OPERATOR_PACKAGE: OPERATOR_DIR})
