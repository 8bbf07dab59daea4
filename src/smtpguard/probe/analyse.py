"""Verdicts from replies: pure functions, no I/O.

The runner collects what the peer answered (core :class:`Reply` objects, timings,
errors); the functions here turn that into :class:`Check` values with one-line
explanations a non-expert can act on. Keeping them pure lets the tests pin every
verdict on literal replies, independent of sockets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smtpguard.core.banner import looks_like_pix_mask
from smtpguard.core.grammar import Reply, ehlo_keyword
from smtpguard.probe.hello import (
    MASKED_KEYWORD,
    Cause,
    HelloChoice,
    is_ehlo_reply,
    masked_keywords,
    stripped_starttls,
)
from smtpguard.probe.messages import CARRIER_TAIL, SMUGGLED_MAIL, escaped
from smtpguard.probe.model import Check, Delivered, Outcome, VariantResult, Verdict

# A run of asterisks in a greeting that is not a full PIX mask (ASA mask-banner, or a
# filter that masks only the host or software name).
_ASTERISK_RUN = re.compile(r"\*{3,}")
# PIX 7.x / ASA rewrite disallowed commands to "XXXX"; servers that echo the unknown
# verb then name it in their reply.
_XXXX = re.compile(r"X{4}")
# Keywords a current MTA usually offers; their absence is worth a note, not a verdict.
COMMON_KEYWORDS = ("PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES", "STARTTLS")
# The made-up verb the probe sends: every server must refuse it (RFC 5321 §4.2.4), so a
# positive reply proves that something in the path rewrote it (PIX 6.x: to NOOP).
UNKNOWN_VERB = "XSGPROBE"


def reply_summary(reply: Reply) -> str:
    """First line of a reply as the log shows it, e.g. ``"500 Unrecognized command"``."""
    return reply.log_lines()[0] if reply.lines else str(reply.code)


def banner_text(reply: Reply) -> str:
    return "\n".join(reply.log_lines())


def is_pix_mask(reply: Reply) -> bool:
    """Would a Postfix sender take this greeting for a PIX mask? (the core's one rule)"""
    return looks_like_pix_mask(reply.raw)


def banner_check(reply: Reply) -> Check:
    text = banner_text(reply)
    if is_pix_mask(reply):
        return Check(
            "banner",
            Verdict.PROBLEM,
            "greeting looks like a Cisco PIX/ASA Mailguard mask (only '2', '0', spaces and "
            "'*'); Postfix senders will switch on their slow PIX workarounds",
            filter_sign=True,
            data={"kind": "pix-mask", "banner": text},
        )
    if _ASTERISK_RUN.search(text):
        return Check(
            "banner",
            Verdict.PROBLEM,
            "greeting is partly overwritten with asterisks: a filter rewrites it",
            filter_sign=True,
            data={"kind": "asterisks", "banner": text},
        )
    return Check(
        "banner",
        Verdict.OK,
        f"clear greeting: {reply_summary(reply)}",
        data={"kind": "clear", "banner": text},
    )


def ehlo_keywords(reply: Reply) -> list[str]:
    """Extension keywords of a 250 EHLO reply (RFC 5321 §4.1.1.1), upper-case."""
    if reply.code != 250:
        return []
    return [k for k in map(ehlo_keyword, reply.lines[1:]) if k]


def ehlo_check(ehlo: Reply | None, helo: Reply | None, error: str | None = None) -> Check:
    helo_note = ""
    if helo is not None:
        helo_note = (
            f"; HELO works ({reply_summary(helo)})"
            if helo.code == 250
            else f"; HELO also refused ({reply_summary(helo)})"
        )
    if ehlo is None:
        return Check("ehlo", Verdict.PROBLEM, f"no answer to EHLO: {error}{helo_note}")
    if ehlo.code >= 500:
        return Check(
            "ehlo",
            Verdict.PROBLEM,
            f"EHLO refused ({reply_summary(ehlo)}): a Mailguard-style filter passes only "
            f"the old RFC 821 commands, senders fall back to HELO and lose ESMTP{helo_note}",
            filter_sign=True,
            data={"reply": reply_summary(ehlo), "keywords": []},
        )
    if ehlo.code != 250:
        return Check(
            "ehlo",
            Verdict.PROBLEM,
            f"EHLO not accepted ({reply_summary(ehlo)}){helo_note}",
            data={"reply": reply_summary(ehlo), "keywords": []},
        )
    keywords = ehlo_keywords(ehlo)
    masked = [k for k in keywords if MASKED_KEYWORD.fullmatch(k)]
    missing = [k for k in COMMON_KEYWORDS if k not in keywords]
    tls_mask = stripped_starttls(keywords)
    data = {
        "reply": reply_summary(ehlo),
        "keywords": keywords,
        "masked": masked,
        "missing_common": missing,
        "starttls_masked": tls_mask,
    }
    if masked:
        read = "; ".join(
            f"{m.token} = {'/'.join(m.candidates) or '?'}" for m in masked_keywords(keywords)
        )
        tls = (
            f"; {tls_mask} stands where STARTTLS was: the path strips STARTTLS" if tls_mask else ""
        )
        return Check(
            "ehlo",
            Verdict.PROBLEM,
            f"extension keywords overwritten with X's, same length ({read}): an ASA-style "
            f"filter (inspect esmtp) masks extensions{tls}; offered: "
            f"{', '.join(keywords) or 'none'}",
            filter_sign=True,
            data=data,
        )
    if not is_ehlo_reply(ehlo):
        return Check(
            "ehlo",
            Verdict.PROBLEM,
            f"EHLO answered like a NOOP ({reply_summary(ehlo)!r} names no server, as an "
            "EHLO reply does): a PIX 6.x-style filter rewrites EHLO to NOOP; senders get "
            f"no ESMTP{helo_note}",
            filter_sign=True,
            data=data,
        )
    if not keywords:
        return Check(
            "ehlo",
            Verdict.PROBLEM,
            f"EHLO answered with a bare {reply_summary(ehlo)!r} and no extension keywords: "
            "a filter hides the server's extensions",
            filter_sign=True,
            data=data,
        )
    note = f" (not offered: {', '.join(missing)})" if missing else ""
    return Check("ehlo", Verdict.OK, f"offers {', '.join(keywords)}{note}", data=data)


def hello_check(choice: HelloChoice) -> Check:
    """Which greeting the message sessions used, and why (:mod:`probe.hello`)."""
    data = choice.to_json()
    if choice.cause is Cause.EHLO:
        return Check("hello", Verdict.OK, choice.detail, data=data)
    if choice.cause is Cause.MAIL_ASKS_HELO:
        return Check("hello", Verdict.PROBLEM, choice.detail, filter_sign=True, data=data)
    # The banner or EHLO check already judges what made the probe fall back.
    return Check("hello", Verdict.INFO, choice.detail, data=data)


def _same_reply(a: Reply, b: Reply) -> bool:
    return a.code == b.code and a.lines == b.lines


def commands_check(replies: Mapping[str, Reply | str]) -> Check:
    """``replies`` maps NOOP, VRFY, EXPN, HELP and :data:`UNKNOWN_VERB` to the reply or
    to an error description (no reply)."""
    noop = replies.get("NOOP")
    unknown = replies.get(UNKNOWN_VERB)
    noop_reply = noop if isinstance(noop, Reply) else None
    rewrites_noop = (
        isinstance(unknown, Reply)
        and unknown.positive
        and noop_reply is not None
        and _same_reply(unknown, noop_reply)
    )
    rewrites_xxxx = any(isinstance(r, Reply) and _XXXX.search(r.text) for r in replies.values())
    parts: list[str] = []
    data: dict[str, str] = {}
    for verb, reply in replies.items():
        if not isinstance(reply, Reply):
            how = f"no reply ({reply})"
        elif rewrites_noop and verb != "NOOP" and noop_reply and _same_reply(reply, noop_reply):
            how = f"rewritten to NOOP ({reply_summary(reply)})"
        elif _XXXX.search(reply.text):
            how = f"rewritten to XXXX ({reply_summary(reply)})"
        elif reply.positive:
            how = f"accepted ({reply_summary(reply)})"
        else:
            how = f"refused ({reply_summary(reply)})"
        data[verb] = how
        parts.append(f"{verb} {how}")
    if rewrites_noop or rewrites_xxxx:
        style = "NOOP (PIX 6.x style)" if rewrites_noop else "XXXX (PIX 7.x/ASA style)"
        return Check(
            "commands",
            Verdict.PROBLEM,
            f"a filter rewrites commands it does not allow to {style}; " + "; ".join(parts),
            filter_sign=True,
            data=data,
        )
    if not (isinstance(noop, Reply) and noop.code == 250):
        return Check(
            "commands",
            Verdict.PROBLEM,
            "NOOP does not work, though every server must accept it; " + "; ".join(parts),
            data=data,
        )
    return Check("commands", Verdict.OK, "; ".join(parts), data=data)


def pipelining_check(
    offered: bool, ehlo_refused: bool, replies: Sequence[Reply] | None, error: str | None
) -> Check:
    if not offered:
        detail = (
            "PIPELINING cannot be seen: EHLO is refused, so no extension is visible"
            if ehlo_refused
            else "PIPELINING not offered: senders wait for each reply (slower, works)"
        )
        return Check("pipelining", Verdict.INFO, detail, data={"offered": False})
    if replies is None:
        return Check(
            "pipelining",
            Verdict.PROBLEM,
            f"PIPELINING is offered but pipelined commands lost their replies ({error}): "
            "something in the path handles one command at a time",
            data={"offered": True, "working": False},
        )
    codes = ", ".join(str(r.code) for r in replies)
    return Check(
        "pipelining",
        Verdict.OK,
        f"offered and working: {len(replies)} commands in one write got {codes} in order",
        data={"offered": True, "working": True},
    )


@dataclass(frozen=True, slots=True)
class TlsResult:
    offered: bool
    tried: bool
    reply: Reply | None = None
    cipher: str | None = None
    error: str | None = None
    implicit: bool = False  # TLS from the first byte (port 465): no STARTTLS at all


def starttls_check(result: TlsResult, ehlo_refused: bool, masked: str | None = None) -> Check:
    """``masked``: the X'd keyword that stands where STARTTLS was (ASA), if any."""
    if result.implicit:
        return Check(
            "starttls",
            Verdict.OK,
            f"implicit TLS from the first byte ({result.cipher or 'TLS'}), no STARTTLS needed",
            data={"implicit": True, "working": True, "cipher": result.cipher},
        )
    if not result.offered and masked:
        return Check(
            "starttls",
            Verdict.PROBLEM,
            f"the path strips STARTTLS: the EHLO reply shows {masked} where it was (an "
            "ASA-style filter without allow-tls masks it, same length); mail to this host "
            "travels unencrypted",
            filter_sign=True,
            data={"offered": False, "masked": masked},
        )
    if not result.offered:
        if result.tried:
            return Check(
                "starttls",
                Verdict.PROBLEM,
                "--tls asked for STARTTLS but the server does not offer it",
                data={"offered": False},
            )
        why = (
            "EHLO is refused, so STARTTLS is not visible"
            if ehlo_refused
            else (
                "STARTTLS not offered: mail to this host travels unencrypted "
                "(a filter may strip it)"
            )
        )
        return Check("starttls", Verdict.INFO, why, data={"offered": False})
    if not result.tried:
        return Check(
            "starttls",
            Verdict.INFO,
            "STARTTLS offered; handshake not tried (use --tls)",
            data={"offered": True},
        )
    if result.cipher is None:
        what = result.error or (reply_summary(result.reply) if result.reply else "unknown")
        return Check(
            "starttls",
            Verdict.PROBLEM,
            f"STARTTLS offered but it does not work: {what}",
            data={"offered": True, "working": False},
        )
    return Check(
        "starttls",
        Verdict.OK,
        f"STARTTLS works ({result.cipher})",
        data={"offered": True, "working": True, "cipher": result.cipher},
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one test message."""

    refused: Reply | None = None  # MAIL, RCPT or DATA refused: the message never went
    refused_at: str | None = None  # MAIL, RCPT, DATA, or CONNECT if never connected
    reply: Reply | None = None  # final reply to the end of data
    seconds: float | None = None
    error: str | None = None  # no final reply: timeout or connection lost
    message_id: str | None = None

    @property
    def answered(self) -> bool:
        return self.reply is not None


def control_check(d: Delivery | None, mail_from: str, rcpt_to: str) -> Check:
    if d is None:
        return Check(
            "control-message", Verdict.SKIPPED, "not sent (--no-send): no message is delivered"
        )
    if d.refused is not None:
        return Check(
            "control-message",
            Verdict.SKIPPED,
            f"server refused {d.refused_at} ({reply_summary(d.refused)}); "
            f"pass --from/--to addresses it accepts (now <{mail_from}> -> <{rcpt_to}>)",
        )
    if d.refused_at is not None:
        return Check("control-message", Verdict.SKIPPED, f"not sent: {d.error}")
    if d.reply is None:
        return Check(
            "control-message",
            Verdict.PROBLEM,
            f"a message whose end-of-data went in one segment got no final reply "
            f"({d.error}): the path does not deliver mail",
        )
    verdict = Verdict.OK if d.reply.code == 250 else Verdict.INFO
    return Check(
        "control-message",
        verdict,
        f"end-of-data in one segment answered in {d.seconds:.3f} s: {reply_summary(d.reply)}",
        data={"seconds": round(d.seconds or 0.0, 3), "reply": reply_summary(d.reply)},
    )


def split_check(
    control: Delivery | None, split: Delivery | None, gap: float
) -> tuple[Check, Outcome]:
    if control is None or split is None or control.reply is None:
        why = (
            "not sent (--no-send)"
            if control is None
            else ("untested: the control message did not get through")
        )
        return Check("split-terminator", Verdict.SKIPPED, why), Outcome.UNTESTED
    if split.refused_at is not None:
        cause = reply_summary(split.refused) if split.refused else (split.error or "")
        return Check(
            "split-terminator",
            Verdict.SKIPPED,
            f"untested: the message could not start ({split.refused_at}: {cause})",
        ), Outcome.UNTESTED
    if split.reply is None:
        return Check(
            "split-terminator",
            Verdict.PROBLEM,
            "end-of-data split across packets is dropped: senders will time out and "
            f"deliver duplicates (CRLF . CRLF as 3 segments {gap:g} s apart: {split.error})",
            data={"gap": gap},
        ), Outcome.FAILED
    control_s = f"{control.seconds:.3f} s" if control.seconds is not None else "n/a"
    return Check(
        "split-terminator",
        Verdict.OK,
        f"end-of-data split into 3 segments {gap:g} s apart answered in "
        f"{split.seconds:.3f} s (one segment: {control_s}): {reply_summary(split.reply)}",
        data={
            "gap": gap,
            "seconds": round(split.seconds or 0.0, 3),
            "control_seconds": control.seconds and round(control.seconds, 3),
        },
    ), Outcome.PASSED


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one smuggling session saw: carrier body + bogus sequence, then (after
    ``early``) the smuggled transaction and the real end of data (``replies``)."""

    carrier_id: str
    smuggled_id: str
    early: Reply | None = None  # answered right after the bogus sequence
    replies: tuple[Reply, ...] = ()  # every reply after the rest was sent
    error: str | None = None  # how the session ended early (timeout, closed)
    untested: str | None = None  # why the carrier could not even start

    @property
    def all_replies(self) -> tuple[Reply, ...]:
        return ((self.early,) if self.early else ()) + self.replies

    @property
    def carrier_expected(self) -> bool:
        """The target acknowledged the carrier (the first reply after DATA is 2xx),
        so it must show up in the mailbox, whole or cut at the bogus sequence."""
        first = self.all_replies[:1]
        return bool(first) and first[0].positive

    @property
    def smuggled_may_follow(self) -> bool:
        """The replies do not show the smuggled transaction refused: either they hide
        it (one reply only) or its message got a 354 and then a 2xx."""
        replies = self.all_replies
        if len(replies) <= 1:
            return True
        codes = [r.code for r in replies]
        return 354 in codes and any(r.positive for r in replies[codes.index(354) + 1 :])


def attempt_outcome(a: Attempt) -> tuple[Outcome, str]:
    """The verdict from replies alone: more than one reply, or a positive one right
    after the bogus sequence, means the sequence ended the data."""
    if a.untested is not None:
        return Outcome.UNTESTED, a.untested
    replies = a.all_replies
    shown = ", ".join(reply_summary(r) for r in replies)
    ended = f"; then {a.error}" if a.error else ""
    if a.early is not None and a.early.positive:
        return Outcome.ACCEPTED, (
            f"answered {reply_summary(a.early)} right after the bogus end-of-data{ended}"
        )
    if len(replies) >= 2:
        return Outcome.ACCEPTED, (
            f"{len(replies)} replies ({shown}): the bogus sequence ended the data and the "
            "rest ran as commands"
        )
    if a.early is not None:
        return Outcome.REJECTED, f"refused at the bogus sequence: {shown}{ended}"
    if not replies:
        return Outcome.REJECTED, f"no reply at all ({a.error or 'session ended'})"
    if replies[0].positive:
        return Outcome.REJECTED, f"kept as content; one reply to the real end: {shown}"
    return Outcome.REJECTED, f"message refused: {shown}"


def _arrived_as(carrier: bytes) -> str:
    start = carrier.find(CARRIER_TAIL)
    end = carrier.find(SMUGGLED_MAIL, start)
    if start < 0 or end < 0:
        return "?"
    return escaped(carrier[start + len(CARRIER_TAIL) : end])


def judge_variant(
    name: str,
    sequence: str,
    a: Attempt,
    mailbox: Mapping[str, bytes] | None,
    complete: bool = True,
) -> VariantResult:
    """Replies and, when the mailbox is readable, what was delivered.

    ``mailbox`` maps Message-IDs to the raw messages found; ``complete`` is false when
    the probe gave up waiting for messages the target acknowledged. A delivered
    smuggled message, or a carrier cut at the bogus sequence, makes the variant
    accepted whatever the replies said: the mailbox is the truth."""
    outcome, detail = attempt_outcome(a)
    replies = tuple(reply_summary(r) for r in a.all_replies)

    def result(o: Outcome, smuggled: Delivered, text: str) -> VariantResult:
        return VariantResult(
            name, sequence, o, smuggled, text, replies, a.carrier_id, a.smuggled_id
        )

    if mailbox is None or outcome is Outcome.UNTESTED:
        return result(outcome, Delivered.UNCHECKED, detail)
    carrier = mailbox.get(a.carrier_id)
    if a.smuggled_id in mailbox:
        if outcome is Outcome.REJECTED:
            detail = f"the replies looked clean ({detail}), yet"
        else:
            detail += "; and"
        return result(
            Outcome.ACCEPTED, Delivered.DELIVERED, f"{detail} the smuggled message was delivered"
        )
    if carrier is not None and a.smuggled_id.encode() not in carrier:
        return result(
            Outcome.ACCEPTED,
            Delivered.NOT_DELIVERED,
            f"{detail}; the carrier was delivered cut at the bogus sequence (the smuggled "
            "message itself did not arrive)",
        )
    if carrier is not None:
        return result(
            outcome,
            Delivered.NOT_DELIVERED,
            f"{detail}; delivered as one message, the sequence arrived as '{_arrived_as(carrier)}'",
        )
    if a.carrier_expected and not complete:
        return result(
            outcome, Delivered.UNCHECKED, f"{detail}; the acknowledged carrier never arrived"
        )
    return result(outcome, Delivered.NOT_DELIVERED, f"{detail}; nothing was delivered")


def smuggling_check(results: Sequence[VariantResult]) -> Check:
    accepted = [v.name for v in results if v.outcome is Outcome.ACCEPTED]
    delivered = [v.name for v in results if v.smuggled is Delivered.DELIVERED]
    tested = [v for v in results if v.outcome is not Outcome.UNTESTED]
    data = {v.name: f"{v.outcome.value}: {v.detail}" for v in results}
    if not tested:
        why = results[0].detail if results else "not run"
        return Check("smuggling", Verdict.SKIPPED, why, data=data)
    if delivered:
        return Check(
            "smuggling",
            Verdict.PROBLEM,
            f"smuggled messages were DELIVERED after {', '.join(delivered)}: an attacker "
            "can inject a second, forged message past filters (SMTP smuggling)",
            data=data,
        )
    if accepted:
        return Check(
            "smuggling",
            Verdict.PROBLEM,
            f"the path takes {', '.join(accepted)} as end of data: an attacker can "
            "smuggle a second, forged message past filters (SMTP smuggling)",
            data=data,
        )
    checked = all(v.smuggled is Delivered.NOT_DELIVERED for v in tested)
    how = "; the mailbox confirms: nothing smuggled arrived" if checked else ""
    return Check(
        "smuggling",
        Verdict.OK,
        f"no bogus end-of-data sequence ends the data ({len(tested)} tried){how}",
        data=data,
    )


def pipelined_data_check(first: Reply | None, rest: Sequence[Reply], error: str | None) -> Check:
    """A message, then MAIL/RCPT/DATA and a second message in the same write (the
    ``pipelining`` test of smtpsmug). RFC 2920 §3.1 makes DATA the last command of a
    group, so a strict server refuses the content sent before its 354; Postfix does
    with ``smtpd_forbid_unauth_pipelining = yes``. Accepting it is not a hole by
    itself, but it is what makes a smuggled transaction run."""
    if first is None or not first.positive:
        why = reply_summary(first) if first else error
        return Check("pipelined-data", Verdict.SKIPPED, f"untested: first message: {why}")
    codes = [r.code for r in rest]
    shown = ", ".join(reply_summary(r) for r in rest) or "none"
    data = {"replies": [reply_summary(r) for r in (first, *rest)]}
    if 354 in codes and any(r.positive for r in rest[codes.index(354) + 1 :]):
        return Check(
            "pipelined-data",
            Verdict.INFO,
            "a second transaction sent with its message before the 354 is accepted "
            f"({shown}): commands after DATA are not held back (RFC 2920 §3.1)",
            data=data,
        )
    if any(c >= 400 for c in codes) or error:
        return Check(
            "pipelined-data",
            Verdict.OK,
            "a message sent before the 354 to a pipelined DATA is refused "
            f"({shown}{'; ' + error if error else ''})",
            data=data,
        )
    return Check(
        "pipelined-data",
        Verdict.INFO,
        f"a pipelined second transaction got {len(rest)} of 4 replies ({shown})",
        data=data,
    )


def auth_mechanisms(ehlo: Reply | None) -> list[str]:
    """SASL mechanisms of the EHLO ``AUTH`` keyword (RFC 4954 §3), upper-case."""
    if ehlo is None or ehlo.code != 250:
        return []
    for line in ehlo.lines[1:]:
        words = line.replace("=", " ", 1).split()
        if words and words[0].upper() == "AUTH":
            return [w.upper() for w in words[1:]]
    return []


def auth_check(mechanism: str | None, reply: Reply | None, error: str | None) -> Check:
    if reply is not None and reply.code == 235:
        return Check(
            "auth",
            Verdict.OK,
            f"AUTH {mechanism} accepted ({reply_summary(reply)})",
            data={"mechanism": mechanism, "reply": reply_summary(reply)},
        )
    what = reply_summary(reply) if reply is not None else error
    return Check(
        "auth",
        Verdict.PROBLEM,
        f"authentication failed{' with ' + mechanism if mechanism else ''}: {what}",
        data={"mechanism": mechanism},
    )


def delivery_check(expected: int, missing: Sequence[str], where: str) -> Check:
    if expected == 0:
        return Check(
            "delivery",
            Verdict.SKIPPED,
            f"the target acknowledged no message, nothing to look for in {where}",
        )
    if missing:
        return Check(
            "delivery",
            Verdict.PROBLEM,
            f"{len(missing)} of {expected} messages the target acknowledged did not arrive in "
            f"{where} (is it the mailbox of --to?); smuggling verdicts without them are "
            "from replies only",
            data={"missing": list(missing)},
        )
    return Check(
        "delivery",
        Verdict.OK,
        f"all {expected} messages the target acknowledged arrived in {where}",
        data={"expected": expected},
    )


def summarise(checks: Sequence[Check]) -> tuple[Verdict, str]:
    problems = [c for c in checks if c.verdict is Verdict.PROBLEM]
    notes: list[str] = []
    if any(c.filter_sign for c in checks):
        notes.append("a Mailguard-style SMTP filter is in the path")
    ids = {c.id for c in problems}
    if "split-terminator" in ids:
        notes.append("split end-of-data is dropped (duplicate deliveries)")
    if "smuggling" in ids:
        notes.append("bogus end-of-data accepted (SMTP smuggling)")
    if any(c.id == "starttls" and c.data.get("masked") for c in problems):
        notes.append("STARTTLS is stripped (mail travels in clear)")
    if not problems:
        return Verdict.OK, "no problem found"
    if "delivery" in ids:
        notes.append("acknowledged mail did not arrive in the mailbox")
    explained = {c.id for c in checks if c.filter_sign} | {
        "split-terminator",
        "smuggling",
        "delivery",
    }
    others = sorted(ids - explained)
    if others:
        notes.append("problems in: " + ", ".join(others))
    return Verdict.PROBLEM, "; ".join(notes)
