"""Replies the gateway itself sends. One place, so wording and codes stay consistent.

Codes follow RFC 5321 §4.2 and enhanced codes RFC 3463. A gateway reply is always
negative or transient: a 2xx for the client only ever comes from the server.
"""

from __future__ import annotations

from smtpguard.core.grammar import make_reply

UNRECOGNIZED = make_reply(500, "5.5.1 Unrecognized command").raw
SYNTAX = make_reply(500, "5.5.2 Syntax error, command unrecognized").raw
LINE_TOO_LONG = make_reply(500, "5.5.2 Command line too long").raw
BDAT_REFUSED = make_reply(502, "5.5.1 BDAT (CHUNKING) not supported here").raw
SERVICE_UNAVAILABLE = make_reply(421, "4.4.1 Service not available, closing connection").raw
UPSTREAM_LOST = make_reply(421, "4.4.2 Connection to mail server lost, closing connection").raw
MESSAGE_UPSTREAM_LOST = make_reply(
    451, "4.4.2 Connection to mail server lost, message not delivered; try again later"
).raw
UPSTREAM_RENEWED = make_reply(
    421, "4.4.2 Mail server connection renewed: reconnect and authenticate again"
).raw
CLIENT_TIMEOUT = make_reply(421, "4.4.2 Idle timeout exceeded, closing connection").raw
TOO_MANY_INVALID = make_reply(550, "5.7.1 Too many invalid recipients").raw
TLS_READY = make_reply(220, "2.0.0 Ready to start TLS").raw
TLS_ACTIVE = make_reply(503, "5.5.1 TLS already active").raw
SHUTTING_DOWN = make_reply(421, "4.3.2 Service shutting down, closing connection").raw


def bad_command_bytes(reason: str) -> bytes:
    return make_reply(500, f"5.5.2 Syntax error: {reason} in command line").raw


def line_too_long_drop(limit: int) -> bytes:
    return make_reply(
        421, f"4.7.0 Command line too long (limit {limit} octets), closing connection"
    ).raw


def bdat_too_large() -> bytes:
    return make_reply(421, "4.7.0 BDAT (CHUNKING) not supported, closing connection").raw


def message_rejected(reason: str) -> bytes:
    return make_reply(
        550, f"5.6.0 Message refused: {reason} in message data; lines must end in CRLF"
    ).raw


def dropped(why: str) -> bytes:
    return make_reply(421, f"4.7.0 {why}, closing connection").raw


def bad_lines_drop(reason: str) -> bytes:
    return make_reply(
        421, f"4.7.0 Repeated {reason} in command lines; lines must end in CRLF, closing connection"
    ).raw


def bad_auth_bytes(reason: str) -> bytes:
    return make_reply(501, f"5.5.2 Authentication cancelled: {reason} in response line").raw


UPSTREAM_DESYNC = make_reply(
    451, "4.5.0 Mail server out of step during message data, message not delivered; try again later"
).raw
SEND_HELLO_FIRST = make_reply(503, "5.5.1 Send EHLO first: TLS started a new session").raw
