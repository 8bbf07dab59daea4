"""Protocol log writers."""

from __future__ import annotations

import datetime as dt
import io
import json

from smtpguard.core.actions import Direction, PolicyEvent, Trace
from smtpguard.logs import ImsLog, JsonlLog, ims_time


def _clock() -> dt.datetime:
    return dt.datetime(2001, 2, 7, 17, 1, 21)


def test_ims_time_matches_the_exchange_layout() -> None:
    assert ims_time(dt.datetime(2001, 2, 7, 17, 1, 21)) == "2/7/01 5:01:21 PM"
    assert ims_time(dt.datetime(2001, 12, 17, 0, 5, 9)) == "12/17/01 12:05:09 AM"
    assert ims_time(dt.datetime(2001, 12, 17, 12, 0, 0)) == "12/17/01 12:00:00 PM"


def test_ims_sessions_are_written_whole_and_never_interleave() -> None:
    out = io.StringIO()
    log = ImsLog(out, _clock)
    log.connect("a", "192.0.2.1:1025")
    log.connect("b", "[2001:db8::1]:1026")
    log.trace("a", Trace(Direction.CLIENT_TO_GW, "HELO mail.domain1.com", verb="HELO"))
    log.trace("b", Trace(Direction.CLIENT_TO_GW, "HELO other", verb="HELO"))
    log.trace("a", Trace(Direction.GW_TO_SERVER, "HELO mail.domain1.com", verb="HELO"))
    log.trace("a", Trace(Direction.GW_TO_CLIENT, "250 OK", code=250))
    log.trace("a", Trace(Direction.CLIENT_TO_GW, "", size=1234))
    log.policy("a", PolicyEvent("SG-CMD-BLOCKED", "x"))
    assert out.getvalue() == ""
    log.disconnect("a")
    log.flush()
    assert out.getvalue().splitlines() == [
        "2/7/01 5:01:21 PM : A connection was accepted from 192.0.2.1",
        "2/7/01 5:01:21 PM : <<< HELO mail.domain1.com",
        "2/7/01 5:01:21 PM : >>> 250 OK",
        "2/7/01 5:01:21 PM : A connection was accepted from 2001:db8::1",
        "2/7/01 5:01:21 PM : <<< HELO other",
    ]


def test_jsonl_events() -> None:
    out = io.StringIO()
    log = JsonlLog(out, lambda: dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    log.connect("s1", "127.0.0.1:5000")
    log.trace("s1", Trace(Direction.SERVER_TO_GW, "250 ok", code=250))
    log.trace("s1", Trace(Direction.CLIENT_TO_GW, "", size=10))
    log.trace("s1", Trace(Direction.CLIENT_TO_GW, "id.1@example.org", size=11))
    log.policy("s1", PolicyEvent("SG-CMD-BLOCKED", "EHLO refused", "reject"))
    log.disconnect("s1")
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert objs[0] == {
        "ts": "2026-01-02T03:04:05+00:00",
        "session": "s1",
        "event": "connect",
        "peer": "127.0.0.1:5000",
    }
    assert objs[1]["event"] == "reply" and objs[1]["code"] == 250 and objs[1]["dir"] == "server>gw"
    assert objs[2] == {**objs[2], "event": "data", "size": 10} and "message_id" not in objs[2]
    assert objs[3] == {**objs[3], "event": "data", "size": 11, "message_id": "id.1@example.org"}
    assert objs[4]["id"] == "SG-CMD-BLOCKED" and objs[4]["action"] == "reject"
    assert objs[5]["event"] == "disconnect"


def test_ims_time_prefix_follows_the_wall_clock_second() -> None:
    # With the default clock the prefix is built once per second: it must still
    # change as soon as the second does, and say the local time of that second.
    out = io.StringIO()
    now = [1_000_000_000.25]
    log = ImsLog(out, wallclock=lambda: now[0])
    log.connect("a", "192.0.2.1:1025")
    now[0] = 1_000_000_000.75
    log.trace("a", Trace(Direction.CLIENT_TO_GW, "HELO x", verb="HELO"))
    now[0] = 1_000_000_001.0
    log.trace("a", Trace(Direction.GW_TO_CLIENT, "250 OK", code=250))
    log.disconnect("a")
    first = ims_time(dt.datetime.fromtimestamp(1_000_000_000).astimezone())
    second = ims_time(dt.datetime.fromtimestamp(1_000_000_001).astimezone())
    assert out.getvalue().splitlines() == [
        f"{first} : A connection was accepted from 192.0.2.1",
        f"{first} : <<< HELO x",
        f"{second} : >>> 250 OK",
    ]
