"""epollmux: share one TCP port between many services.

Accepts connections, sniffs the client's first bytes with MSG_PEEK, picks a route,
connects its backend and relays both directions with os.splice.
"""

__version__ = "0.1.0"
