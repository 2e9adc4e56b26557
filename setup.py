"""Package discovery plus the one package that discovery cannot name; everything else is in pyproject.toml.

pyproject.toml can either list packages by hand or discover them, not both; `search_studies` (the repository's
studies/ folder, see [tool.setuptools.package-dir]) is not a folder of that name, so discovery alone misses it.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["search", "search.*", "models", "models.*"]) + ["search_studies"])
