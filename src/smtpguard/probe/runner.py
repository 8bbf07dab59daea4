"""Runs the checks against one target and builds the report.

Theory of operation: each phase opens its own SMTP session, so that a check that
leaves a session in an unknown state (a timeout, a bogus end-of-data) cannot spoil
the next one. Every session is set up the same way: TCP (TLS first with
``--implicit-tls``), greeting, EHLO or HELO, STARTTLS and EHLO again with ``--tls``,
AUTH with ``--auth-user``. The dialogue always tries EHLO and decides, as a Postfix
sender would (:mod:`smtpguard.probe.hello`), whether to go on with HELO: masked
banner, EHLO refused, a 250 that is no EHLO reply (PIX 6.x NOOP rewrite), or MAIL
asking for HELO. The message sessions then greet as decided (a :class:`Plan`), and
the first MAIL that asks for HELO after an EHLO switches the rest of the run to HELO:

1. dialogue — banner, EHLO, NOOP/VRFY/EXPN/HELP/unknown verb, pipelined
   MAIL/RCPT/RSET (never DATA), the STARTTLS and AUTH results;
2. control message — end-of-data in one write;             } skipped with --no-send
3. split message — end-of-data as three segments;          }
4. pipelined data — a second transaction sent before 354;  }
5. one session per smuggling variant: carrier + bogus end  }
   of data + a whole second transaction + the real end;    }
6. with ``--maildir``/``--mbox``: a last (sentinel) message, then the mailbox is
   watched until every message the target acknowledged has arrived, and each
   variant is judged by what was really delivered.

All verdicts come from :mod:`smtpguard.probe.analyse`; this module only talks.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from smtpguard.core.grammar import END_OF_DATA, Reply
from smtpguard.probe import analyse, hello
from smtpguard.probe.client import ConnectFailed, ProbeError, SmtpClient
from smtpguard.probe.mailbox import Mailbox
from smtpguard.probe.messages import (
    SMUGGLING_VARIANTS,
    SPLIT_SEGMENTS,
    carrier_message,
    escaped,
    new_message_id,
    probe_message,
    smuggled_transaction,
)
from smtpguard.probe.model import (
    Check,
    ProbeOptions,
    ProbeReport,
    Verdict,
)

COMMAND_VERBS = ("NOOP", "VRFY", "EXPN", "HELP", analyse.UNKNOWN_VERB)
# How often the mailbox is re-read while waiting for deliveries.
MAILBOX_POLL = 0.2
# At most this many replies are read after a smuggling attempt (the carrier's, MAIL,
# RCPT, DATA, the smuggled message's, and one spare).
MAX_SMUGGLE_REPLIES = 6
NO_TLS = analyse.TlsResult(offered=False, tried=False)


@dataclass(slots=True)
class Plan:
    """How every message session greets: the dialogue's choice, switched to HELO for
    the rest of the run by the first MAIL that asks for HELO after an EHLO."""

    choice: hello.HelloChoice | None = None


@dataclass(frozen=True, slots=True)
class Greeting:
    banner: Reply
    ehlo: Reply | None
    helo: Reply | None
    error: str | None = None
    tls: analyse.TlsResult = NO_TLS
    ehlo_after_tls: Reply | None = None
    auth: Check | None = None
    hello: hello.HelloChoice | None = None  # None: no usable greeting at all

    @property
    def ehlo_refused(self) -> bool:
        return self.ehlo is None or self.ehlo.code != 250

    @property
    def keywords(self) -> list[str]:
        """Keywords of the latest EHLO (after STARTTLS if it was done)."""
        latest = self.ehlo_after_tls or self.ehlo
        return analyse.ehlo_keywords(latest) if latest else []


async def _starttls(client: SmtpClient, opts: ProbeOptions) -> tuple[analyse.TlsResult, Reply]:
    """STARTTLS, handshake, EHLO again. Raises :class:`ProbeError` when the session
    cannot go on (handshake failed or no answer)."""
    reply = await client.command("STARTTLS")
    if reply.code != 220:
        return analyse.TlsResult(True, True, reply=reply), reply
    cipher = await client.starttls(opts.host)
    after = await client.command(f"EHLO {opts.helo_name}")
    if after.code != 250:
        return analyse.TlsResult(True, True, reply=after), after
    return analyse.TlsResult(True, True, cipher=cipher), after


async def _authenticate(client: SmtpClient, opts: ProbeOptions, ehlo: Reply | None) -> Check:
    """AUTH PLAIN (RFC 4616), or LOGIN when only that is offered; never in clear."""
    user, password = opts.auth_user or "", opts.auth_pass or ""
    if client.tls_description() is None:
        return analyse.auth_check(None, None, "not attempted: the session is not encrypted")
    offered = analyse.auth_mechanisms(ehlo)
    mechanism = "PLAIN" if "PLAIN" in offered or "LOGIN" not in offered else "LOGIN"
    if not offered:
        return analyse.auth_check(None, None, "the server offers no AUTH after EHLO")

    def b64(text: str) -> str:
        return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")

    try:
        if mechanism == "PLAIN":
            reply = await client.command("AUTH PLAIN " + b64("\0" + user + "\0" + password))
        else:
            reply = await client.command("AUTH LOGIN")
            for answer in (user, password):
                if reply.code != 334:
                    break
                reply = await client.command(b64(answer))
    except ProbeError as exc:
        return analyse.auth_check(mechanism, None, str(exc))
    return analyse.auth_check(mechanism, reply, None)


async def _greet(
    client: SmtpClient, opts: ProbeOptions, banner: Reply, plan: hello.HelloChoice | None
) -> Greeting:
    """HELO alone when ``plan`` says so; else EHLO, and HELO after it when
    :func:`hello.choose` says a sender would fall back."""
    if plan is not None and plan.verb == "HELO":
        try:
            helo = await client.command(f"HELO {opts.helo_name}")
        except ProbeError as exc:
            return Greeting(banner, None, None, str(exc))
        return Greeting(banner, None, helo, hello=plan)
    try:
        ehlo = await client.command(f"EHLO {opts.helo_name}")
    except ProbeError as exc:
        return Greeting(banner, None, None, str(exc))
    need_esmtp = opts.tls or opts.auth_user is not None
    choice = hello.choose(banner, ehlo, need_esmtp)
    if choice.verb == "EHLO":
        return Greeting(banner, ehlo, None, hello=choice)
    try:
        helo = await client.command(f"HELO {opts.helo_name}")
    except ProbeError as exc:
        return Greeting(banner, ehlo, None, str(exc), hello=choice)
    return Greeting(banner, ehlo, helo, hello=choice)


async def open_session(
    opts: ProbeOptions, strict: bool = True, plan: hello.HelloChoice | None = None
) -> tuple[SmtpClient, Greeting]:
    """Connect, read the greeting, EHLO or HELO (:func:`_greet`), then STARTTLS and
    AUTH as the options ask.

    Raises :class:`ConnectFailed` if there is no usable session at all; with
    ``strict`` also when STARTTLS or AUTH was asked for and did not work (a message
    session must not go on without them), else the results are in the greeting.
    """
    client = await SmtpClient.connect(opts.host, opts.port, opts.timeout, opts.implicit_tls)
    try:
        banner = await client.read_reply()
    except ProbeError as exc:
        await client.close()
        raise ConnectFailed(f"no greeting from {opts.target}: {exc}") from exc
    if banner.code != 220:
        await client.close()
        raise ConnectFailed(f"{opts.target} refuses the session: {analyse.reply_summary(banner)}")
    greet = await _greet(client, opts, banner, plan)
    if greet.error is not None:
        return client, greet
    if opts.implicit_tls:
        tls = analyse.TlsResult(False, False, cipher=client.tls_description(), implicit=True)
        greet = dataclasses.replace(greet, tls=tls)
    elif "STARTTLS" in greet.keywords or opts.tls:
        tls = analyse.TlsResult("STARTTLS" in greet.keywords, opts.tls)
        if tls.offered and opts.tls:
            try:
                tls, after = await _starttls(client, opts)
            except ProbeError as exc:
                tls = analyse.TlsResult(True, True, error=str(exc))
                if strict:
                    await client.close()
                    raise ConnectFailed(f"STARTTLS failed: {exc}") from exc
                client.broken = True  # the dialogue goes on in a new session
                return client, dataclasses.replace(greet, tls=tls)
            greet = dataclasses.replace(greet, ehlo_after_tls=after)
        greet = dataclasses.replace(greet, tls=tls)
        if strict and opts.tls and tls.cipher is None:
            await client.quit()
            why = tls.error or (analyse.reply_summary(tls.reply) if tls.reply else "not offered")
            raise ConnectFailed(f"--tls: STARTTLS did not work ({why})")
    if opts.auth_user is not None:
        auth = await _authenticate(client, opts, greet.ehlo_after_tls or greet.ehlo)
        greet = dataclasses.replace(greet, auth=auth)
        if strict and auth.verdict is not Verdict.OK:
            await client.quit()
            raise ConnectFailed(auth.detail)
    return client, greet


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


async def _pipelining(client: SmtpClient, opts: ProbeOptions) -> Check:
    """Pipelined MAIL/RCPT/RSET in one write."""
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


def _plain(opts: ProbeOptions) -> ProbeOptions:
    """The same target without STARTTLS and AUTH (after they failed)."""
    return dataclasses.replace(opts, tls=False, auth_user=None, auth_pass=None)


async def _mail_asks_helo(
    client: SmtpClient, opts: ProbeOptions, choice: hello.HelloChoice
) -> hello.HelloChoice | None:
    """MAIL (and RSET after it) in a session greeted with EHLO: the new choice when
    the server answers as if it never saw a greeting (PIX rewrote the EHLO)."""
    try:
        reply = await client.command(f"MAIL FROM:<{opts.mail_from}>")
        if reply.positive:
            await client.command("RSET")
    except ProbeError:
        return None
    return hello.after_mail(choice, reply)


async def dialogue(opts: ProbeOptions) -> tuple[Greeting, list[Check]]:
    client, greet = await open_session(opts, strict=False)
    checks = [
        analyse.banner_check(greet.banner),
        analyse.ehlo_check(greet.ehlo, greet.helo, greet.error),
    ]
    try:
        if greet.hello is None or (greet.hello.verb == "HELO" and greet.helo is None):
            return greet, checks
        if client.broken:  # the STARTTLS handshake failed: go on in clear
            await client.close()
            client, _ = await open_session(_plain(opts))
        replies, usable = await _commands(client)
        checks.append(analyse.commands_check(replies))
        again = opts if greet.tls.cipher else _plain(opts)
        if usable and greet.hello.verb == "EHLO":
            switched = await _mail_asks_helo(client, opts, greet.hello)
            usable = not client.broken and switched is None
            if switched is not None:
                greet = dataclasses.replace(greet, hello=switched)
                again = _plain(opts)  # STARTTLS and AUTH need EHLO
        if not usable:
            await client.close()
            client, _ = await open_session(again, plan=greet.hello)
        offered = "PIPELINING" in greet.keywords
        piped = await _pipelining(client, opts) if offered else None
        checks.append(piped or analyse.pipelining_check(False, greet.ehlo_refused, None, None))
        masked = hello.stripped_starttls(greet.keywords)
        checks.append(analyse.starttls_check(greet.tls, greet.ehlo_refused, masked))
        if greet.auth is not None:
            checks.append(greet.auth)
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


async def _transaction(
    opts: ProbeOptions, plan: Plan
) -> tuple[SmtpClient, analyse.Delivery | None]:
    """A session greeted as ``plan`` says, then MAIL, RCPT, DATA (:func:`_start_data`).
    A MAIL that asks for HELO after an EHLO switches ``plan`` to HELO and the
    transaction is started again in a new session. Raises :class:`ConnectFailed`."""
    client, greet = await open_session(opts, plan=plan.choice)
    refused = await _start_data(client, opts)
    current = greet.hello or plan.choice
    if refused is None or refused.refused_at != "MAIL" or refused.refused is None or not current:
        return client, refused
    switched = hello.after_mail(current, refused.refused)
    if switched is None:
        return client, refused
    plan.choice = switched
    await client.quit()
    client, _ = await open_session(opts, plan=switched)
    return client, await _start_data(client, opts)


async def deliver(opts: ProbeOptions, purpose: str, end: Ender, plan: Plan) -> analyse.Delivery:
    """One message in its own session; the end-of-data goes out through ``end``."""
    message_id = new_message_id(opts.helo_name)
    try:
        client, refused = await _transaction(opts, plan)
    except ConnectFailed as exc:
        return analyse.Delivery(refused_at="CONNECT", error=str(exc))
    try:
        if refused is not None:
            return refused
        body = probe_message(purpose, opts.mail_from, opts.rcpt_to, opts.helo_name, message_id)
        try:
            await client.send(body)
            await end(client)
            reply, seconds = await client.timed_reply()
        except ProbeError as exc:
            return analyse.Delivery(error=str(exc))
        return analyse.Delivery(reply=reply, seconds=seconds, message_id=message_id)
    finally:
        await client.quit()


async def _more_replies(client: SmtpClient, wait: float, limit: int) -> list[Reply]:
    """Replies that start within ``wait`` seconds of each other, up to ``limit``."""
    replies: list[Reply] = []
    while len(replies) < limit:
        reply = await client.poll_reply(wait)
        if reply is None:
            break
        replies.append(reply)
    return replies


async def pipelined_data(opts: ProbeOptions, plan: Plan) -> Check:
    """A message, then MAIL, RCPT, DATA and a second message, all in one write."""
    try:
        client, refused = await _transaction(opts, plan)
    except ConnectFailed as exc:
        return analyse.pipelined_data_check(None, (), str(exc))
    try:
        if refused is not None:
            return analyse.pipelined_data_check(refused.refused, (), refused.error)
        first = probe_message("pipelined 1/2", opts.mail_from, opts.rcpt_to, opts.helo_name)
        second = smuggled_transaction(
            "a pipelined DATA (2/2)",
            opts.mail_from,
            opts.rcpt_to,
            opts.helo_name,
            new_message_id(opts.helo_name),
        )
        reply: Reply | None = None
        rest: list[Reply] = []
        try:
            await client.send(first + END_OF_DATA + second + END_OF_DATA)
            reply = await client.read_reply()
            rest = await _more_replies(client, opts.smuggle_wait, MAX_SMUGGLE_REPLIES - 1)
        except ProbeError as exc:
            return analyse.pipelined_data_check(reply, rest, f"session ended: {exc}")
        return analyse.pipelined_data_check(reply, rest, None)
    finally:
        await client.quit()


async def smuggle(opts: ProbeOptions, name: str, bogus: bytes, plan: Plan) -> analyse.Attempt:
    """Carrier body + bogus end-of-data; wait for an early answer; then the smuggled
    transaction and the real end in one write; collect every reply."""
    cid = new_message_id(opts.helo_name, "carrier")
    sid = new_message_id(opts.helo_name, "smuggled")
    try:
        client, refused = await _transaction(opts, plan)
    except ConnectFailed as exc:
        return analyse.Attempt(cid, sid, untested=str(exc))
    try:
        if refused is not None:
            why = analyse.reply_summary(refused.refused) if refused.refused else refused.error
            return analyse.Attempt(cid, sid, untested=f"{refused.refused_at} refused: {why}")
        args = (name, opts.mail_from, opts.rcpt_to, opts.helo_name)
        carrier = carrier_message(*args, cid)
        smuggled = smuggled_transaction(*args, sid)
        early: Reply | None = None
        replies: list[Reply] = []
        try:
            await client.send(carrier + bogus)
            early = await client.poll_reply(opts.smuggle_wait)
            await client.send(smuggled + END_OF_DATA)
            limit = MAX_SMUGGLE_REPLIES - (early is not None)
            if early is None:
                replies.append(await client.read_reply())
            replies += await _more_replies(client, opts.smuggle_wait, limit - len(replies))
        except ProbeError as exc:
            return analyse.Attempt(cid, sid, early=early, replies=tuple(replies), error=str(exc))
        return analyse.Attempt(cid, sid, early=early, replies=tuple(replies))
    finally:
        await client.quit()


async def _watch(
    box: Mailbox, wanted: Callable[[], set[str]], timeout: float
) -> tuple[bool, list[str]]:
    """Re-read the mailbox until every wanted Message-ID is there; returns whether
    they all arrived and which are missing."""
    deadline = time.monotonic() + timeout
    while True:
        box.scan()
        missing = wanted() - box.messages.keys()
        if not missing or time.monotonic() >= deadline:
            return not missing, sorted(missing)
        await asyncio.sleep(MAILBOX_POLL)


async def _check_mailbox(
    opts: ProbeOptions,
    box: Mailbox,
    acknowledged: list[str],
    attempts: dict[str, analyse.Attempt],
    plan: Plan,
) -> tuple[Check, bool]:
    """Wait for the acknowledged messages (and the smuggled one of each carrier that
    arrived cut at its bogus sequence); returns the delivery check and whether the
    mailbox is complete."""
    sentinel = await deliver(opts, "delivery check, last message", _end_whole, plan)
    if sentinel.reply is not None and sentinel.reply.positive and sentinel.message_id:
        acknowledged = [*acknowledged, sentinel.message_id]
    carriers = {a.carrier_id: a for a in attempts.values() if a.carrier_expected}

    def wanted() -> set[str]:
        ids = set(acknowledged) | set(carriers)
        for cid, a in carriers.items():
            raw = box.messages.get(cid)
            if raw is not None and a.smuggled_id.encode() not in raw and a.smuggled_may_follow:
                ids.add(a.smuggled_id)  # cut carrier: the smuggled one may follow
        return ids

    _, missing = await _watch(box, wanted, opts.delivery_timeout)
    expected = len(wanted())
    # A smuggled message that never arrives after a cut carrier is the path refusing
    # the second transaction, not lost mail.
    smuggled = {a.smuggled_id for a in carriers.values()}
    lost = [m for m in missing if m not in smuggled]
    return analyse.delivery_check(expected, lost, str(box.path)), not lost


async def run_probe(opts: ProbeOptions) -> ProbeReport:
    """Run every check. Raises :class:`ConnectFailed` if the target is unreachable."""
    box = Mailbox(opts.mailbox[1], opts.mailbox[0]) if opts.mailbox else None
    if box is not None:
        box.scan()
    greet, checks = await dialogue(opts)
    plan = Plan(greet.hello)
    control = split = None
    if opts.send:
        control = await deliver(opts, "control, end-of-data in one segment", _end_whole, plan)
        if control.reply is not None:
            split_end = _end_split(opts.gap)
            split = await deliver(opts, "end-of-data split over 3 segments", split_end, plan)
    checks.append(analyse.control_check(control, opts.mail_from, opts.rcpt_to))
    split_result, split_outcome = analyse.split_check(control, split, opts.gap)
    checks.append(split_result)
    attempts: dict[str, analyse.Attempt] = {}
    if control is not None and control.reply is not None:
        checks.append(await pipelined_data(opts, plan))
        for name, bogus in SMUGGLING_VARIANTS.items():
            attempts[name] = await smuggle(opts, name, bogus, plan)
    else:
        why = (
            "not sent (--no-send)"
            if control is None
            else ("untested: the control message did not get through")
        )
        checks.append(Check("pipelined-data", Verdict.SKIPPED, why))
        attempts = {name: analyse.Attempt("", "", untested=why) for name in SMUGGLING_VARIANTS}
    delivery: Check | None = None
    complete = True
    if box is not None and opts.send and control is not None and control.reply is not None:
        acknowledged = [
            d.message_id
            for d in (control, split)
            if d is not None and d.reply is not None and d.reply.positive and d.message_id
        ]
        delivery, complete = await _check_mailbox(opts, box, acknowledged, attempts, plan)
    mailbox = box.messages if box is not None and delivery is not None else None
    variants = tuple(
        analyse.judge_variant(name, escaped(SMUGGLING_VARIANTS[name]), a, mailbox, complete)
        for name, a in attempts.items()
    )
    checks.append(analyse.smuggling_check(variants))
    if delivery is not None:
        checks.append(delivery)
    if plan.choice is not None:  # after "ehlo": the greeting the whole run used
        checks.insert(2, analyse.hello_check(plan.choice))
    verdict, summary = analyse.summarise(checks)
    return ProbeReport(
        target=opts.target,
        banner=analyse.banner_text(greet.banner),
        checks=tuple(checks),
        split_terminator=split_outcome,
        smuggling={v.name: v.outcome for v in variants},
        verdict=verdict,
        summary=summary,
        variants=variants,
        mailbox=f"{opts.mailbox[0]}:{opts.mailbox[1]}" if opts.mailbox else None,
        hello=plan.choice,
    )
