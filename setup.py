"""Package discovery, the one package that discovery cannot name, and the `search` command; everything else is in
pyproject.toml.

pyproject.toml can either list packages by hand or discover them, not both; `search_studies` (the repository's
studies/ folder, see [tool.setuptools.package-dir]) is not a folder of that name, so discovery alone misses it.
"""
from setuptools import find_packages, setup

# The `search` command is bin/search, a shell script, not a [project.scripts] console script: it starts the
# interpreter with the stop signals blocked, so a Ctrl-C in the interpreter's own start-up cannot print a traceback
# (see the script). `python -m search` runs the same entry point.
setup(packages=find_packages(include=["search", "search.*", "models", "models.*"]) + ["search_studies"],
      scripts=["bin/search"])
