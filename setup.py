"""What pyproject.toml cannot say; everything else is there.

- The package list is found in the tree, so no subpackage can be left out of the wheel.
  ``migrations/`` sits at the top level of the checkout and ships as ``clipdb.migrations``
  (pyproject.toml maps the folder); ``find_packages`` cannot prefix the names it finds, so the
  mapped packages get their prefix here.
- ``pip install -e .`` puts the checkout itself on ``sys.path`` (a .pth path entry, setuptools'
  "compat" mode) instead of an import hook: a hook is asked only after the whole path is
  searched, so a script run beside a checkout folder named ``clipdb`` imported that folder as
  an empty namespace package instead of clipdb.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["clipdb", "clipdb.*"]),
        "clipdb.migrations",
        *(f"clipdb.migrations.{name}" for name in find_packages("migrations")),
    ],
    options={"editable_wheel": {"mode": "compat"}},
)
