"""Websocket close codes runwire sends (RFC 6455 and its registry; 4xxx are runwire's own)."""

#: The engine closes a connection that stayed idle (no request open, nothing received) for
#: ``Limits.idle_timeout``; the client reconnects when it needs to.
CLOSE_GOING_AWAY = 1001
#: A peer sent a binary (not text) message.
CLOSE_UNSUPPORTED = 1003
#: A message was bad in a way that ends the connection (for example invalid UTF-8).
CLOSE_INVALID_DATA = 1007
#: A message was left half-sent for longer than ``Limits.message_timeout``.
CLOSE_POLICY = 1008
#: This side must abort the connection (a message was cut short, a bug in a session).
CLOSE_INTERNAL = 1011
#: The engine is overloaded (too many connections); try again later.
CLOSE_TRY_AGAIN = 1013
#: ``hello`` missing, or the credential refused.
CLOSE_UNAUTHORIZED = 4401
#: Unsupported protocol version, or a frame that breaks the protocol.
CLOSE_BAD_PROTOCOL = 4400
