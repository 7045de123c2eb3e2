"""Build hook: a wheel carries the book template (notebooks, _config.yml, _toc.yml, narrative pages).

The template lives at the top of the repository, where Jupyter Book expects it;
``build_py`` copies it into ``triphase/_template`` so that ``triphase init``
works from an installed wheel, outside this repository. Everything else is in
``pyproject.toml``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
TEMPLATE_FILES = ("_config.yml", "_toc.yml")
TEMPLATE_DIRS = ("notebooks", "book")
TEMPLATE_IGNORE = ("executed", "_build", ".ipynb_checkpoints", "__pycache__")


class BuildWithTemplate(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the template from this checkout
            return
        target = Path(self.build_lib) / "triphase" / "_template"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in TEMPLATE_FILES:
            shutil.copy2(HERE / name, target / name)
        for name in TEMPLATE_DIRS:
            shutil.copytree(HERE / name, target / name, ignore=shutil.ignore_patterns(*TEMPLATE_IGNORE))


setup(cmdclass={"build_py": BuildWithTemplate})
