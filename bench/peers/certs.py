"""Certificates for the TLS sections: self-signed ECDSA P-256 and RSA-2048, made with `openssl` in the run's
temp dir (and deleted with it).

Owns: `make(tmpdir, kind)` -> `Cert` (certificate, key, and both in one PEM for HAProxy's `crt`).
Every subject of a run loads the same files, so they present the same chain and the same key type.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

NAME = "bench.example"
KINDS = {
    "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}
LABELS = {"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}


@dataclass(frozen=True)
class Cert:
    kind: str
    cert: str
    key: str
    combined: str       # certificate then key, one file

    @property
    def pair(self) -> tuple[str, str]:
        return (self.cert, self.key)


def make(tmpdir: str, kind: str) -> Cert:
    base = os.path.join(tmpdir, f"cert-{kind}")
    cert, key, combined = base + ".crt", base + ".key", base + ".pem"
    if not os.path.exists(combined):
        subprocess.run(["openssl", "req", "-x509", *KINDS[kind], "-nodes", "-days", "7", "-keyout", key,
                        "-out", cert, "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}"],
                       check=True, capture_output=True, timeout=60)
        with open(combined, "w") as out:
            for path in (cert, key):
                with open(path) as f:
                    out.write(f.read())
    return Cert(kind, cert, key, combined)
