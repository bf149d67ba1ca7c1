"""Wire formats: the probes, the sniffing decision, the TLS ClientHello parser, PROXY v1/v2 parse and build.

Owns: pure functions over bytes (sans-I/O): standard library only.
Must not import: `acl`, `checks`, `cli`, `config`, `observe`, `process`, `reactor`, `relay`, `serve`, `sslh`, `tls`, `tools`.
"""
