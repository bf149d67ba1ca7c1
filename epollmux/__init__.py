"""epollmux: share one TCP port between many services.

Accepts connections, sniffs the client's first bytes with MSG_PEEK, picks a route,
connects its backend and relays both directions with os.splice.

Owns: the version. The layers are the subpackages (README "Architecture").
Must not import anything (importing the package loads no layer).
"""

__version__ = "0.1.0"
