"""Packages: ``hthlight`` and its subpackages, plus ``kernels/`` installed as ``hthlight.kernels``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["hthlight", "hthlight.*"]), "hthlight.kernels"],
    package_dir={"hthlight.kernels": "kernels"},
)
