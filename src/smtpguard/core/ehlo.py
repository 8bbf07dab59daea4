"""EHLO reply filtering and ESMTP parameter rules (esmtp mode, docs/design.md#modes).

The server's EHLO keywords pass through an allow-list; extensions the gateway cannot
inspect (CHUNKING, BINARYMIME) or that would let a client speak for the gateway
(XCLIENT, XFORWARD, XEXCH50, any X-*) are always stripped. The keywords the client
was shown decide which MAIL/RCPT parameters it may use: a parameter of an extension
it was never offered is refused (RFC 5321 §4.1.1.11: 555).
"""

from __future__ import annotations

from smtpguard.core.grammar import Reply, ascii_upper, ehlo_keyword, make_reply
from smtpguard.core.policy import ALWAYS_STRIPPED_KEYWORDS, Policy, StartTls

# RFC 1870 SIZE, RFC 6152 8BITMIME (BODY=), RFC 3461 DSN, RFC 6531 SMTPUTF8,
# RFC 4954 AUTH, RFC 3030 BINARYMIME (BODY=BINARYMIME), RFC 4865 FUTURERELEASE ...
_MAIL_PARAMS = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "RET": "DSN",
    "ENVID": "DSN",
    "SMTPUTF8": "SMTPUTF8",
    "AUTH": "AUTH",
}
_RCPT_PARAMS = {"NOTIFY": "DSN", "ORCPT": "DSN"}


def filter_ehlo(
    reply: Reply, policy: Policy, tls: str = "strip"
) -> tuple[bytes, frozenset[str], list[str]]:
    """Return the reply bytes for the client, the keywords it was shown, and the
    keywords removed. Non-2xx replies pass unchanged. ``tls``: ``strip`` the
    server's STARTTLS, ``keep`` it (passthrough), or ``offer`` the gateway's own
    (terminate: shown whether or not the server has it)."""
    if reply.code != 250:
        return reply.raw, frozenset(), []
    allowed = policy.ehlo_keywords
    keep_tls = tls == "keep"
    kept_lines = [reply.lines[0]]
    shown: set[str] = set()
    removed: list[str] = []
    for line in reply.lines[1:]:
        keyword = ehlo_keyword(line)
        ok = (keyword in allowed or (keyword == "STARTTLS" and keep_tls)) and not (
            keyword in ALWAYS_STRIPPED_KEYWORDS or keyword.startswith("X")
        )
        if ok:
            kept_lines.append(line)
            shown.add(keyword)
        else:
            removed.append(keyword)
    if tls == "offer":
        kept_lines.append("STARTTLS")
        shown.add("STARTTLS")
        removed = [k for k in removed if k != "STARTTLS"]
        return make_reply(250, *kept_lines).raw, frozenset(shown), removed
    if not removed:
        return reply.raw, frozenset(shown), []
    return make_reply(250, *kept_lines).raw, frozenset(shown), removed


def tls_offer(policy: Policy, client_tls: bool) -> str:
    """How an EHLO reply shows STARTTLS: ``strip`` it, ``keep`` the server's
    (passthrough), or ``offer`` the gateway's own (terminate, client still in clear)."""
    mode = policy.starttls
    if mode is StartTls.STRIP:
        return "strip"
    if mode is StartTls.PASSTHROUGH:
        return "keep"
    return "strip" if client_tls else "offer"


def refused_parameter(verb: str, params: str, shown: frozenset[str]) -> str | None:
    """The first MAIL/RCPT parameter whose extension the client was not shown, or
    ``None`` if all are allowed. ``BODY=BINARYMIME`` needs BINARYMIME, always
    stripped."""
    table = _MAIL_PARAMS if verb == "MAIL" else _RCPT_PARAMS
    for param in params.split():
        name, _, value = param.partition("=")
        name = ascii_upper(name)
        needed = table.get(name)
        if name == "BODY" and ascii_upper(value) == "BINARYMIME":
            needed = "BINARYMIME"
        if needed is None or needed not in shown:
            return param
    return None


def parameter_refused_reply(param: str) -> bytes:
    return make_reply(555, f"5.5.4 {param.split('=')[0]} parameter not supported here").raw
