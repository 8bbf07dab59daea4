"""Reads the gateway's ``jsonl`` log and the server's log of the same traffic together.

Theory of operation. A server behind smtpguard logs every message the gateway
refuses part-way, and every re-sent copy its ``[dedupe]`` suppresses, as a client
lost in DATA (Postfix: ``lost connection after DATA (N bytes)``): by design the
gateway aborts its upstream connection without the terminator so that the server
discards the message. Read alone, that line is the Mailguard signature. Read with
the gateway's log it is not:

* the ``jsonl`` parser sums up the upstream leg of every message the server
  answered 354 as an :class:`UpstreamEnd`: the server's final reply, or the point
  where the gateway dropped that connection, and the policy event that made it;
* the scanner holds back every ``stalled_data`` and ``suppressed_copy`` finding
  (bounded) and every copy a server log shows accepted, until all inputs are read
  (in any order);
* :meth:`Correlator.finish` pairs each server-side loss with the upstream leg the
  gateway dropped at the same moment (one to one, nearest in time within
  ``tolerance``; the client address breaks ties when XCLIENT passed it on):

  - dropped for a refusal (the event's id, e.g. ``SG-DATA-BAD-BYTES``): a
    ``gateway_abort`` finding that names the event and its line;
  - dropped for ``SG-DEDUPE-SUPPRESSED``: no finding of its own — the gateway's
    ``suppressed_copy`` finding says where the server logged the aborted copy;
  - dropped because the gateway's own client stopped in DATA: ``gateway_abort``
    (the stall itself is reported once, on the gateway's client leg);
  - the gateway sent the whole message and gave up on the server (``SG-UPSTREAM-*``),
    yet the server says the data never ended: still ``stalled_data``, with both
    sides told (something between the two ate the terminator);
  - swallowed by the lab's PIX emulation (``SG-EMULATE-SPLIT-EOD``): still
    ``stalled_data`` on both logs, each naming the emulated bug — it is the
    Mailguard failure, reproduced on purpose;

* a message the gateway relayed in full but gave up on (timeout, server lost)
  that the server log shows accepted (same sender and recipients, same time) is
  ``slow_server``; so is a stall on the gateway's client leg whose upstream leg got
  the server's 2xx after all — the reply came, only too late for the client.

Clocks: ``jsonl`` times carry their offset (read as UTC); a classic syslog stamp is
the server's local time. The offset between the logs is the one, among 0 and
every quarter hour up to ±14 h, under which the most upstream events find their
server counterpart (ties: the smallest; a shift other than 0 needs two pairs at
least); with no counterpart at all it is 0.

What it cannot see: Postfix does not log the client's port by default, and the
gateway's log does not count the bytes it relayed upstream, so two aborts in one
second are told apart only by client address (with XCLIENT) — they are paired in
time order, and both are explained either way.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import NamedTuple

from .model import Cause, Delivered, Finding, Kind, Side, UpstreamEnd
from .rules import strip_port

TOLERANCE = timedelta(seconds=2)
# How long before its 354 a server may log a message's first line (Postfix
# ``client=`` comes at the first accepted RCPT) and still be the same message.
ENVELOPE_LEAD = timedelta(minutes=10)
# Held findings and upstream legs kept; past these, findings go out as they are
# and legs are not kept (counted in ``not_correlated``).
MAX_HELD = 100_000
MAX_UPSTREAM = 200_000
OFFSET_STEP = timedelta(minutes=15)
MAX_OFFSET = timedelta(hours=14)
# Messages a server accepted, and gateway legs it accepted, kept to measure the
# clock offset. Past it, a server's accepted message is kept only when a leg the
# gateway gave up on has its envelope (slow_server): memory follows the gateway's
# problems, not the server log's size. Hence gateway logs are read first
# (:func:`gateway_first`).
OFFSET_SAMPLE = 5_000
# A clock shift other than 0 must pair at least this many events: one coincidence
# (a single loss half an hour from a single gateway abort) is not a time zone.
MIN_SHIFT_EVIDENCE = 2
SUPPRESSED = "SG-DEDUPE-SUPPRESSED"
# The lab's PIX emulation swallowing a split end of data (serve --emulate-bug
# split-eod): not a refusal but the Mailguard bug itself, on purpose.
EMULATED_BUG = "SG-EMULATE-SPLIT-EOD"


class _Copy(NamedTuple):
    """A message a server log shows it accepted."""

    file: str
    line: int
    time: datetime
    envelope: tuple[str, frozenset[str]]
    message_id: str


class _Leg(NamedTuple):
    file: str
    ev: UpstreamEnd


class Correlator:
    def __init__(self, tolerance: timedelta = TOLERANCE) -> None:
        self.tolerance = tolerance
        self._legs: list[_Leg] = []
        self._held: list[tuple[Finding, Side, bool]] = []  # finding, side, from a jsonl
        self._copies: list[_Copy] = []
        self.offset = timedelta(0)
        self.explained: Counter[str] = Counter()  # server-side losses, by gateway event
        self.not_correlated = 0  # findings or legs past the caps
        self._accepted_legs = 0
        self._wanted: set[tuple[str, frozenset[str]]] = set()  # envelopes of slow legs
        self.copies_not_kept = 0  # server copies past the sample, before any gateway log
        self.gateway_seen = False

    # ------------------------------------------------------------------ input
    def upstream(self, file: str, ev: UpstreamEnd) -> None:
        self.gateway_seen = True
        if ev.accepted and ev.client_replied:  # the usual message: a sample is enough
            if self._accepted_legs >= OFFSET_SAMPLE:
                return
            self._accepted_legs += 1
        if len(self._legs) >= MAX_UPSTREAM:
            self.not_correlated += 1
            return
        self._legs.append(_Leg(file, ev))
        if _dropped(ev) and ev.terminator_sent and len(self._wanted) < MAX_UPSTREAM:
            self._wanted.add(_envelope(ev))

    def hold(self, f: Finding, side: Side, gateway: bool) -> bool:
        """Keep a stall or suppressed copy until every input is read; False: full."""
        if len(self._held) >= MAX_HELD:
            self.not_correlated += 1
            return False
        self._held.append((f, side, gateway))
        return True

    def server_copy(self, file: str, d: Delivered) -> None:
        if d.time is None or d.stalled or d.side is not Side.RECEIVING:
            return
        sample = len(self._copies) < OFFSET_SAMPLE
        if not sample and not self._wanted:  # the usual case past the sample: cheap
            if not self.gateway_seen:
                self.copies_not_kept += 1
            return
        env = ((d.mail_from or "").lower(), frozenset(r.lower() for r in d.rcpt_to))
        if sample or env in self._wanted:
            self._copies.append(_Copy(file, d.line, d.time, env, d.message_id))
        elif not self.gateway_seen:
            self.copies_not_kept += 1

    # ----------------------------------------------------------------- output
    def finish(self) -> list[Finding]:
        held, self._held = self._held, []
        if not self._legs:
            return [f for f, _, _ in held]
        losses = [
            (i, f)
            for i, (f, side, gw) in enumerate(held)
            if not gw and side is Side.RECEIVING and f.kind is Kind.STALLED_DATA and f.time
        ]
        self.offset = self._offset([f for _, f in losses])
        paired = self._pair(losses)
        out: list[Finding] = []
        slow = self._slow_legs()
        slow_sessions = {(leg.file, leg.ev.session) for leg, _ in slow.values()}
        held_suppressed = {
            (f.file, f.session, f.line) for f, _, gw in held if gw and f.kind is Kind.SUPPRESSED
        }
        legs_by_session: dict[tuple[str, str], list[_Leg]] = defaultdict(list)
        emulated: dict[tuple[str, str], _Leg] = {}
        for each in self._legs:
            if each.ev.accepted:
                legs_by_session[(each.file, each.ev.session)].append(each)
            elif each.ev.cause_id == EMULATED_BUG:
                emulated[(each.file, each.ev.session)] = each
        suppressed_loss: dict[tuple[str, str, int], Finding] = {}
        for i, f in losses:
            p = paired.get(i)
            if p is not None and p.ev.cause_id == SUPPRESSED:
                suppressed_loss[(p.file, p.ev.session, p.ev.cause_line)] = f
        for i, (f, _side, gw) in enumerate(held):
            if gw and f.kind is Kind.SUPPRESSED:
                loss = suppressed_loss.get((f.file, f.session, f.line))
                out.append(_suppressed(f, loss) if loss else f)
                continue
            if gw and f.kind is Kind.STALLED_DATA:
                if (f.file, f.session) in slow_sessions:
                    continue  # told once, as slow_server
                legs = legs_by_session.get((f.file, f.session), ())
                bug = emulated.get((f.file, f.session))
                late = _late_reply(f, legs)
                out.append(late or (_emulated(f, bug, client_leg=True) if bug else f))
                continue
            leg = paired.get(i)
            if leg is None:
                out.append(f)
                continue
            cause = leg.ev.cause_id
            if cause == EMULATED_BUG:  # a stall all the same: not "explained away"
                out.append(_emulated(f, leg, client_leg=False))
                continue
            self.explained[cause or "client-stopped"] += 1
            if cause == SUPPRESSED:
                if (leg.file, leg.ev.session, leg.ev.cause_line) not in held_suppressed:
                    out.append(_abort(f, leg))  # its suppressed_copy was not held
                continue
            if cause.startswith("SG-UPSTREAM-") and leg.ev.terminator_sent:
                out.append(_between(f, leg))
                continue
            out.append(_abort(f, leg))
        for leg, copy in slow.values():
            out.append(_slow(leg, copy))
        return out

    # ------------------------------------------------------------ internals
    def _offset(self, losses: list[Finding]) -> timedelta:
        """The shift of the server's clock against the gateway's that pairs most."""
        aborted = [leg.ev.end_time for leg in self._legs if _dropped(leg.ev) and leg.ev.end_time]
        accepted = [leg.ev for leg in self._legs if leg.ev.accepted and leg.ev.time]
        aborted, accepted = aborted[:OFFSET_SAMPLE], accepted[:OFFSET_SAMPLE]
        loss_times = sorted(t for t in map(_lost_at, losses) if t)[:OFFSET_SAMPLE]
        aborted_times = sorted(aborted)
        copies = self._copies_by_envelope()
        best, best_score = timedelta(0), 0
        steps = int(MAX_OFFSET / OFFSET_STEP)
        candidates = sorted(
            (OFFSET_STEP * k for k in range(-steps, steps + 1)), key=lambda d: abs(d)
        )
        for shift in candidates:
            score = sum(_near(aborted_times, t - shift, self.tolerance) for t in loss_times)
            for ev in accepted:
                times = copies.get(_envelope(ev))
                if times and ev.time is not None:
                    score += _within(times, ev.time + shift - ENVELOPE_LEAD, ev.time + shift)
            if score > best_score and (not shift or score >= MIN_SHIFT_EVIDENCE):
                best, best_score = shift, score
        return best

    def _copies_by_envelope(self) -> dict[tuple[str, frozenset[str]], list[datetime]]:
        out: dict[tuple[str, frozenset[str]], list[datetime]] = defaultdict(list)
        for c in self._copies:
            out[c.envelope].append(c.time)
        for times in out.values():
            times.sort()
        return out

    def _pair(self, losses: list[tuple[int, Finding]]) -> dict[int, _Leg]:
        """Each server loss with the dropped upstream leg nearest in time, one to one."""
        legs = sorted(
            (leg for leg in self._legs if _dropped(leg.ev) and leg.ev.end_time),
            key=lambda leg: leg.ev.end_time or datetime.min,
        )
        times = [(leg.ev.end_time or datetime.min) + self.offset for leg in legs]
        used: set[int] = set()
        out: dict[int, _Leg] = {}
        for i, f in sorted(losses, key=lambda x: _lost_at(x[1]) or datetime.min):
            at = _lost_at(f)
            assert at is not None
            lo = bisect.bisect_left(times, at - self.tolerance)
            hi = bisect.bisect_right(times, at + self.tolerance)
            host = _host(f.peer)
            choice: tuple[int, float, int] | None = None  # (peer differs, distance, j)
            for j in range(lo, hi):
                if j in used:
                    continue
                key = (
                    int(bool(host) and _host(legs[j].ev.client_peer) != host),
                    abs((times[j] - at).total_seconds()),
                    j,
                )
                if choice is None or key < choice:
                    choice = key
            if choice is not None:
                used.add(choice[2])
                out[i] = legs[choice[2]]
        return out

    def _slow_legs(self) -> dict[int, tuple[_Leg, _Copy]]:
        """Legs the gateway gave up on after relaying the end of data, that the server
        log shows accepted: same envelope, logged before the gateway gave up."""
        copies: dict[tuple[str, frozenset[str]], list[_Copy]] = defaultdict(list)
        for c in self._copies:
            copies[c.envelope].append(c)
        used: set[tuple[str, int]] = set()
        out: dict[int, tuple[_Leg, _Copy]] = {}
        for n, leg in enumerate(self._legs):
            ev = leg.ev
            if not _dropped(ev) or not ev.terminator_sent or ev.time is None or not ev.end_time:
                continue
            first = ev.time + self.offset - ENVELOPE_LEAD
            last = ev.end_time + self.offset + self.tolerance
            for c in copies.get(_envelope(ev), ()):
                if first <= c.time <= last and (c.file, c.line) not in used:
                    used.add((c.file, c.line))
                    out[n] = (leg, c)
                    break
        return out


def _late_reply(f: Finding, legs: Iterable[_Leg]) -> Finding | None:
    """A stall on the gateway's client leg whose upstream leg was accepted."""
    for leg in legs:
        ev = leg.ev
        if ev.line <= f.line <= ev.end_line and not ev.client_replied:
            waited = _seconds(ev.time, ev.end_time)
            return Finding(
                Kind.SLOW_SERVER,
                f.file,
                f.line,
                f.time,
                f.peer,
                f.session,
                f"the client got 354 and sent its end of data, but left before the "
                f"final reply: the server accepted the message ({ev.reply.strip()!r}"
                f"{waited}) after the client had given up — a slow server (or an "
                f"impatient client), not a filter eating CRLF.CRLF; the client "
                f"will re-send a message that was delivered",
                f.copies,
                f.start,
                f.sender,
                Cause("", f.file, ev.end_line),
            )
    return None


def _lost_at(f: Finding) -> datetime | None:
    """When a server lost its client: the end of the stalled session where the log
    shows it (a dialogue log's stall is dated at its 354), else the finding's time
    (Postfix dates ``lost connection after DATA`` at the loss)."""
    end = f.copies[0].end if f.copies else None
    return end or f.time


def _dropped(ev: UpstreamEnd) -> bool:
    """The gateway dropped the leg: no final reply from the server ended it."""
    return not ev.reply and not ev.accepted


def _envelope(ev: UpstreamEnd) -> tuple[str, frozenset[str]]:
    return ((ev.mail_from or "").lower(), frozenset(r.lower() for r in ev.rcpt_to))


def _near(times: list[datetime], t: datetime, tol: timedelta) -> int:
    return int(bisect.bisect_right(times, t + tol) > bisect.bisect_left(times, t - tol))


def _within(times: list[datetime], lo: datetime, hi: datetime) -> int:
    return int(bisect.bisect_right(times, hi) > bisect.bisect_left(times, lo))


def _host(peer: str) -> str:
    """``localhost[127.0.0.1]`` → ``127.0.0.1``; ``192.0.2.1:4321`` → ``192.0.2.1``."""
    if "[" in peer and peer.endswith("]"):
        return peer[peer.rindex("[") + 1 : -1].lower()
    if peer.endswith("]") or "]:" in peer:
        peer = peer.rsplit(":", 1)[0] if "]:" in peer else peer
        return peer[peer.rfind("[") + 1 :].rstrip("]").lower()
    return strip_port(peer).lower()


def _seconds(a: datetime | None, b: datetime | None) -> str:
    if a is None or b is None:
        return ""
    return f", {(b - a).total_seconds():.1f} s after its 354"


def _at(leg: _Leg) -> str:
    line = leg.ev.cause_line or leg.ev.end_line
    return f"{leg.file}:{line}"


def _abort(f: Finding, leg: _Leg) -> Finding:
    ev = leg.ev
    if ev.cause_id == SUPPRESSED:
        why = (
            f"the gateway suppressed a re-sent copy: {SUPPRESSED} ({ev.cause_message}) at "
            f"{_at(leg)}"
        )
        after = "the client was answered by the gateway; no retry follows from it"
    elif ev.cause_id:
        why = f"the gateway refused it: {ev.cause_id} ({ev.cause_message}) at {_at(leg)}"
        after = "the client got the gateway's own reply to it"
    else:
        why = (
            f"the gateway's own client stopped in the middle of the message data "
            f"(session {ev.session} at {leg.file}:{ev.line}); that stall is reported on "
            f"the gateway's client leg, once"
        )
        after = "whether the client tries again is for the gateway's side to show"
    return Finding(
        Kind.GATEWAY_ABORT,
        f.file,
        f.line,
        f.time,
        f.peer,
        f.session,
        f"the server lost its client in DATA, but not to a filter: {why}. The gateway "
        f"aborts its connection to the server without the end of data by design, so "
        f"the server discards the message; {after}",
        (),
        f.start,
        ev.mail_from,
        Cause(ev.cause_id, leg.file, ev.cause_line or ev.end_line),
    )


def _emulated(f: Finding, leg: _Leg, client_leg: bool) -> Finding:
    """A stall the gateway caused on purpose, emulating the PIX bug (lab only)."""
    ev = leg.ev
    if client_leg:
        what = (
            "the gateway itself swallowed the end of data, split across segments: it "
            "runs the lab's PIX emulation with the CSCds90792 bug on"
        )
    else:
        what = (
            "the server never got the end of data because the gateway in front of it "
            "swallowed it: the lab's PIX emulation with the CSCds90792 bug on"
        )
    return replace(
        f,
        detail=f"{f.detail}. Read with the gateway's log: {what} ({EMULATED_BUG} at "
        f"{_at(leg)}) — the Mailguard failure, reproduced on purpose",
        sender=ev.mail_from or f.sender,
        cause=Cause(EMULATED_BUG, leg.file, ev.cause_line or ev.end_line),
    )


def _between(f: Finding, leg: _Leg) -> Finding:
    ev = leg.ev
    return replace(
        f,
        detail=f"{f.detail}. The gateway relayed the whole message with its end of data "
        f"and then gave up on the server ({ev.cause_id}: {ev.cause_message}, at "
        f"{_at(leg)}): the terminator left the gateway but never reached the server — "
        f"something between the gateway and the server ate it",
        sender=ev.mail_from or f.sender,
        cause=Cause(ev.cause_id, leg.file, ev.cause_line or ev.end_line),
    )


def _suppressed(f: Finding, loss: Finding) -> Finding:
    return replace(
        f,
        detail=f"{f.detail}. The server logged the aborted copy at {loss.file}:{loss.line} "
        f"(a loss in DATA by design, not a stall)",
        cause=Cause(SUPPRESSED, loss.file, loss.line),
    )


def _slow(leg: _Leg, copy: _Copy) -> Finding:
    ev = leg.ev
    why = f"{ev.cause_id}: {ev.cause_message}" if ev.cause_id else "the leg was dropped"
    told = "the client got a temporary failure" if ev.client_replied else "the client got no reply"
    mid = f" <{copy.message_id}>" if copy.message_id else ""
    return Finding(
        Kind.SLOW_SERVER,
        leg.file,
        ev.cause_line or ev.end_line,
        ev.end_time,
        ev.client_peer,
        ev.session,
        f"the gateway relayed the whole message with its end of data, then gave up "
        f"waiting for the server's final reply ({why}); {told}. The server did accept "
        f"the message{mid} ({copy.file}:{copy.line}): a slow server, not a filter eating "
        f"CRLF.CRLF — the sender's retry will be delivered a second time",
        (),
        ev.time,
        ev.mail_from,
        Cause(ev.cause_id, copy.file, copy.line),
    )


def explained_summary(c: Correlator, gateway_logs: Iterable[str]) -> dict[str, object]:
    return {
        "gateway_logs": sorted(set(gateway_logs)),
        "clock_offset_seconds": int(c.offset.total_seconds()),
        "server_losses_explained": dict(sorted(c.explained.items())),
        "not_correlated": c.not_correlated,
        "server_copies_not_kept": c.copies_not_kept,
    }


def gateway_first(names: list[str]) -> list[str]:
    """The inputs with smtpguard ``jsonl`` logs first (a file whose first byte is
    ``{``), otherwise in the order given: a server log read after the gateway's
    keeps only the copies the gateway's log asks about."""

    def is_jsonl(name: str) -> bool:
        if name == "-":
            return False
        try:
            with open(name, "rb") as f:
                return f.read(1) == b"{"
        except OSError:
            return False  # reported when it is scanned

    return sorted(names, key=lambda n: not is_jsonl(n))
