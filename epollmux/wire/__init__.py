"""Wire formats: the probes, the sniffing decision, the TLS ClientHello parser, PROXY v1/v2 parse and build.

Pure functions over bytes (sans-I/O): standard library only.
Must not import: any other epollmux subpackage, the reactor, sockets.
"""
