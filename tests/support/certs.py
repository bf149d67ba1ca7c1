"""Test certificates made with the `openssl` command line: a CA, and leaves issued on demand.

Owns: key and certificate generation for tests (ECDSA P-256 or RSA-2048 keys; any validity window,
including expired and not-yet-valid; mismatched cert/key pairs). Imports nothing from epollmux.

Use `make_ca(directory)` directly, the `make_ca_factory` fixture for a fresh CA in the test's tmp_path,
or the session-wide `tls_ca` fixture (leaves are cached per arguments, so RSA keys are made once).
Other test files import the fixtures: `from certs import tls_ca, make_ca_factory  # noqa: F401`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_KEY_ARGS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}
_CA_CONFIG = """\
[ca]
default_ca = local
[local]
database = {db}/index.txt
new_certs_dir = {db}
serial = {db}/serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
commonName = supplied
"""


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _asn1_time(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%SZ")


@dataclass(frozen=True)
class Issued:
    """Paths of one issued leaf: `cert` (leaf only), `chain` (leaf then CA), `key`."""

    cert: Path
    chain: Path
    key: Path
    names: tuple[str, ...]


class CertAuthority:
    """A throw-away CA in `directory`; `issue()` signs leaf certificates with it."""

    def __init__(self, directory: Path, name: str = "epollmux test CA", key: str = "ec") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert = self.directory / "ca.pem"
        self.key = self.directory / "ca.key"
        self._db = self.directory / "db"
        self._db.mkdir(exist_ok=True)
        (self._db / "index.txt").touch()
        (self._db / "serial").write_text("1000\n")
        self._config = self.directory / "ca.cnf"
        self._config.write_text(_CA_CONFIG.format(db=self._db))
        self._counter = itertools.count(1)
        self._cache: dict[tuple, Issued] = {}
        _openssl("req", "-x509", *_KEY_ARGS[key], "-nodes", "-keyout", self.key, "-out", self.cert,
                 "-subj", f"/CN={name}", "-days", "3650",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, names: list[str] | tuple[str, ...] | str, key: str = "ec", days: int = 30,
              start_days: int = -1) -> Issued:
        """A leaf for DNS `names` (first = CN), valid from now+start_days to now+days (days<0: expired)."""
        names = (names,) if isinstance(names, str) else tuple(names)
        wanted = (names, key, days, start_days)
        if wanted not in self._cache:
            self._cache[wanted] = self._issue(names, key, days, start_days)
        return self._cache[wanted]

    def mismatched(self, names: list[str] | str, key: str = "ec") -> Issued:
        """A leaf for `names` paired with the key of a different leaf."""
        good = self.issue(names, key)
        other = self._issue(("other.invalid",), key, 30, -1)
        return Issued(good.cert, good.chain, other.key, good.names)

    def _issue(self, names: tuple[str, ...], key: str, days: int, start_days: int) -> Issued:
        stem = self.directory / f"leaf{next(self._counter)}-{names[0].replace('*', '_star')}-{key}"
        csr, ext = stem.with_suffix(".csr"), stem.with_suffix(".ext")
        leaf = Issued(stem.with_suffix(".pem"), stem.with_suffix(".chain.pem"), stem.with_suffix(".key"), names)
        _openssl("req", "-new", *_KEY_ARGS[key], "-nodes", "-keyout", leaf.key, "-out", csr,
                 "-subj", f"/CN={names[0]}")
        ext.write_text("subjectAltName = " + ", ".join(f"DNS:{n}" for n in names) + "\n"
                       "basicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth, clientAuth\n")
        now = dt.datetime.now(dt.timezone.utc)
        _openssl("ca", "-batch", "-notext", "-config", self._config, "-cert", self.cert, "-keyfile", self.key,
                 "-in", csr, "-out", leaf.cert, "-extfile", ext,
                 "-startdate", _asn1_time(now + dt.timedelta(days=start_days)),
                 "-enddate", _asn1_time(now + dt.timedelta(days=days)))
        leaf.chain.write_text(leaf.cert.read_text() + self.cert.read_text())
        return leaf


def make_ca(directory: Path, name: str = "epollmux test CA", key: str = "ec") -> CertAuthority:
    return CertAuthority(directory, name, key)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """One CA for the whole test session."""
    return make_ca(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture
def make_ca_factory(tmp_path: Path):
    """make_ca_factory(name) -> a fresh CA under this test's tmp_path."""
    def factory(name: str = "other test CA", key: str = "ec") -> CertAuthority:
        return make_ca(tmp_path / name.replace(" ", "-"), name, key)
    return factory
