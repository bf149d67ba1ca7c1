"""Packaging for epollmux: the package, its configspec and the `epollmux` command."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("epollmux").joinpath("__init__.py").read_text()).group(1)

setup(
    name="epollmux",
    version=VERSION,
    description="Share one TCP port between SSH, TLS, HTTP, OpenVPN and more; splice relay; TLS termination",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["epollmux", "epollmux.*"]),
    package_data={"epollmux": ["configspec.ini"]},
    install_requires=["configobj>=5.0", "python-daemon>=2.3", "sdnotify>=0.3", "libconf>=2.0",
                      "cryptography>=3.4"],
    entry_points={"console_scripts": ["epollmux = epollmux.cli:main"]},
    classifiers=["Operating System :: POSIX :: Linux", "Programming Language :: Python :: 3"],
)
