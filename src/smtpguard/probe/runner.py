"""Runs the checks against one target and builds the report.

Theory of operation: each phase opens its own SMTP session, so that a check that
leaves a session in an unknown state (a timeout, a bogus end-of-data) cannot spoil
the next one:

1. dialogue — banner, EHLO (HELO fallback), NOOP/VRFY/EXPN/HELP/unknown verb,
   pipelined MAIL/RCPT/RSET (never DATA), STARTTLS if ``--tls``;
2. control message — end-of-data in one write;           } skipped with --no-send
3. split message — end-of-data as three segments;        }
4. one session per smuggling variant.                    }

All verdicts come from :mod:`smtpguard.probe.analyse`; this module only talks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from smtpguard.core.grammar import CRLF, END_OF_DATA, Reply
from smtpguard.probe import analyse
from smtpguard.probe.client import ConnectFailed, ProbeError, SmtpClient
from smtpguard.probe.messages import SMUGGLING_VARIANTS, SPLIT_SEGMENTS, probe_message
from smtpguard.probe.model import Check, Outcome, ProbeOptions, ProbeReport, Verdict

COMMAND_VERBS = ("NOOP", "VRFY", "EXPN", "HELP", analyse.UNKNOWN_VERB)


@dataclass(frozen=True, slots=True)
class Greeting:
    banner: Reply
    ehlo: Reply | None
    helo: Reply | None
    error: str | None = None

    @property
    def ehlo_refused(self) -> bool:
        return self.ehlo is None or self.ehlo.code != 250

    @property
    def keywords(self) -> list[str]:
        return analyse.ehlo_keywords(self.ehlo) if self.ehlo else []


async def open_session(opts: ProbeOptions) -> tuple[SmtpClient, Greeting]:
    """Connect, read the greeting, EHLO (HELO if EHLO is refused).

    Raises :class:`ConnectFailed` if there is no usable session at all.
    """
    client = await SmtpClient.connect(opts.host, opts.port, opts.timeout)
    try:
        banner = await client.read_reply()
    except ProbeError as exc:
        await client.close()
        raise ConnectFailed(f"no greeting from {opts.target}: {exc}") from exc
    if banner.code != 220:
        await client.close()
        raise ConnectFailed(f"{opts.target} refuses the session: {analyse.reply_summary(banner)}")
    try:
        ehlo = await client.command(f"EHLO {opts.helo_name}")
    except ProbeError as exc:
        return client, Greeting(banner, None, None, str(exc))
    helo = None
    if ehlo.code != 250:
        try:
            helo = await client.command(f"HELO {opts.helo_name}")
        except ProbeError as exc:
            return client, Greeting(banner, ehlo, None, str(exc))
    return client, Greeting(banner, ehlo, helo)


async def _commands(client: SmtpClient) -> tuple[dict[str, Reply | str], bool]:
    """Send each probe command; returns replies and whether the session is usable."""
    replies: dict[str, Reply | str] = {}
    for verb in COMMAND_VERBS:
        line = verb if verb in ("NOOP", "HELP") else f"{verb} postmaster"
        try:
            replies[verb] = await client.command(line)
        except ProbeError as exc:
            replies[verb] = str(exc)
            return replies, False
    return replies, True


async def _pipelining(client: SmtpClient, opts: ProbeOptions) -> Check | None:
    """Pipelined MAIL/RCPT/RSET in one write. ``None`` when not offered (no test)."""
    batch = (f"MAIL FROM:<{opts.mail_from}>\r\nRCPT TO:<{opts.rcpt_to}>\r\nRSET\r\n").encode(
        "utf-8", "surrogateescape"
    )
    replies: list[Reply] = []
    try:
        await client.send(batch)
        for _ in range(3):
            replies.append(await client.read_reply())
    except ProbeError as exc:
        error = f"{len(replies)} of 3 replies, then {exc}"
        return analyse.pipelining_check(True, False, None, error)
    return analyse.pipelining_check(True, False, replies, None)


async def _starttls(client: SmtpClient, opts: ProbeOptions) -> analyse.TlsResult:
    try:
        reply = await client.command("STARTTLS")
        if reply.code != 220:
            return analyse.TlsResult(True, True, reply=reply)
        cipher = await client.starttls(opts.host)
        after = await client.command(f"EHLO {opts.helo_name}")
    except ProbeError as exc:
        return analyse.TlsResult(True, True, error=str(exc))
    if after.code != 250:
        return analyse.TlsResult(True, True, reply=after)
    return analyse.TlsResult(True, True, cipher=cipher)


async def dialogue(opts: ProbeOptions) -> tuple[Greeting, list[Check]]:
    client, greet = await open_session(opts)
    checks = [
        analyse.banner_check(greet.banner),
        analyse.ehlo_check(greet.ehlo, greet.helo, greet.error),
    ]
    try:
        if greet.error is not None:
            return greet, checks
        replies, usable = await _commands(client)
        checks.append(analyse.commands_check(replies))
        if not usable:
            await client.close()
            client, _ = await open_session(opts)
        offered = "PIPELINING" in greet.keywords
        piped = await _pipelining(client, opts) if offered else None
        checks.append(piped or analyse.pipelining_check(False, greet.ehlo_refused, None, None))
        tls = analyse.TlsResult("STARTTLS" in greet.keywords, opts.tls)
        if tls.offered and opts.tls and (piped is None or piped.verdict is not Verdict.PROBLEM):
            tls = await _starttls(client, opts)
        checks.append(analyse.starttls_check(tls, greet.ehlo_refused))
    finally:
        await client.quit()
    return greet, checks


Ender = Callable[[SmtpClient], Awaitable[None]]


async def _end_whole(client: SmtpClient) -> None:
    await client.send(END_OF_DATA)


def _end_split(gap: float) -> Ender:
    async def send(client: SmtpClient) -> None:
        client.set_nodelay()
        for segment in SPLIT_SEGMENTS:
            await asyncio.sleep(gap)
            await client.send(segment)

    return send


async def _start_data(client: SmtpClient, opts: ProbeOptions) -> analyse.Delivery | None:
    """MAIL, RCPT, DATA. ``None`` when the server is ready for data (354)."""
    steps = (
        ("MAIL", f"MAIL FROM:<{opts.mail_from}>", 250),
        ("RCPT", f"RCPT TO:<{opts.rcpt_to}>", 250),
        ("DATA", "DATA", 354),
    )
    for verb, line, want in steps:
        try:
            reply = await client.command(line)
        except ProbeError as exc:
            return analyse.Delivery(refused_at=verb, error=f"no reply to {verb}: {exc}")
        if reply.code != want and not (verb == "RCPT" and reply.code == 251):
            return analyse.Delivery(refused=reply, refused_at=verb)
    return None


async def deliver(opts: ProbeOptions, purpose: str, end: Ender) -> analyse.Delivery:
    """One message in its own session; the end-of-data goes out through ``end``."""
    try:
        client, _ = await open_session(opts)
    except ConnectFailed as exc:
        return analyse.Delivery(refused_at="CONNECT", error=str(exc))
    try:
        refused = await _start_data(client, opts)
        if refused is not None:
            return refused
        body = probe_message(purpose, opts.mail_from, opts.rcpt_to, opts.helo_name)
        try:
            await client.send(body)
            await end(client)
            reply, seconds = await client.timed_reply()
        except ProbeError as exc:
            return analyse.Delivery(error=str(exc))
        return analyse.Delivery(reply=reply, seconds=seconds)
    finally:
        await client.quit()


async def smuggle(opts: ProbeOptions, name: str, bogus: bytes) -> tuple[Outcome, str]:
    """Body + bogus end-of-data, wait, then the real one. Accepted if the server
    answered the bogus one, or gave two replies (late answer to the bogus one)."""
    try:
        client, _ = await open_session(opts)
    except ConnectFailed as exc:
        return Outcome.UNTESTED, str(exc)
    try:
        refused = await _start_data(client, opts)
        if refused is not None:
            why = analyse.reply_summary(refused.refused) if refused.refused else refused.error
            return Outcome.UNTESTED, f"{refused.refused_at} refused: {why}"
        body = probe_message(
            f"smuggling variant {name}", opts.mail_from, opts.rcpt_to, opts.helo_name
        )
        try:
            await client.send(body + bogus)
            early = await client.poll_reply(opts.smuggle_wait)
        except ProbeError as exc:
            return Outcome.REJECTED, f"session ended on the bare line ending ({exc})"
        if early is not None:
            return Outcome.ACCEPTED, (
                f"answered {analyse.reply_summary(early)} right after the bogus end-of-data"
            )
        try:
            await client.send(END_OF_DATA)
            final = await client.read_reply()
        except ProbeError as exc:
            return Outcome.REJECTED, f"no reply to the real end-of-data either ({exc})"
        try:
            await client.send(b"NOOP" + CRLF)
            following = await client.read_reply()
        except ProbeError:
            return Outcome.REJECTED, f"one reply ({analyse.reply_summary(final)})"
        if not following.positive:
            return Outcome.ACCEPTED, (
                f"two replies ({analyse.reply_summary(final)}, then "
                f"{analyse.reply_summary(following)}): the bogus sequence ended the data"
            )
        return Outcome.REJECTED, (
            f"kept as content; one reply to the real end: {analyse.reply_summary(final)}"
        )
    finally:
        await client.quit()


async def run_probe(opts: ProbeOptions) -> ProbeReport:
    """Run every check. Raises :class:`ConnectFailed` if the target is unreachable."""
    greet, checks = await dialogue(opts)
    control = split = None
    smuggling: dict[str, tuple[Outcome, str]]
    if opts.send:
        control = await deliver(opts, "control, end-of-data in one segment", _end_whole)
        if control.reply is not None:
            split = await deliver(opts, "end-of-data split over 3 segments", _end_split(opts.gap))
    checks.append(analyse.control_check(control, opts.mail_from, opts.rcpt_to))
    split_result, split_outcome = analyse.split_check(control, split, opts.gap)
    checks.append(split_result)
    if control is not None and control.reply is not None:
        smuggling = {}
        for name, bogus in SMUGGLING_VARIANTS.items():
            smuggling[name] = await smuggle(opts, name, bogus)
    else:
        why = (
            "not sent (--no-send)"
            if control is None
            else ("untested: the control message did not get through")
        )
        smuggling = dict.fromkeys(SMUGGLING_VARIANTS, (Outcome.UNTESTED, why))
    checks.append(analyse.smuggling_check(smuggling))
    verdict, summary = analyse.summarise(checks)
    return ProbeReport(
        target=opts.target,
        banner=analyse.banner_text(greet.banner),
        checks=tuple(checks),
        split_terminator=split_outcome,
        smuggling={k: v[0] for k, v in smuggling.items()},
        verdict=verdict,
        summary=summary,
    )
