"""On-demand benchmark: smtpguard against the relays a user would pick instead.

    python3 bench/peers.py [--messages 10000] [--rounds 3] [--relays LIST]
                           [--gateway-src PATH] [--json FILE] [--check-loopback]

Relays, each in front of its own ``smtp-sink``, all started in one run:

- ``direct``: smtp-source straight to its sink (the latency baseline);
- ``haproxy``: HAProxy in TCP mode (the reference of every ratio);
- ``nginx-wN``: nginx's mail proxy, N worker processes, ``smtp_auth none``, the
  ``auth_http`` request answered by the same nginx with the relay's sink;
- ``haraka-nN``: Haraka with ``queue/smtp_forward``, ``nodes=N``;
- ``MODE-wN``: ``smtpguard serve --mode MODE --workers N`` with the default checks
  and the IMS protocol log on (``--protocol-log``), from ``--gateway-src`` if given;
  ``MODE-wN@SRC`` from the source tree SRC instead, so two builds (say, a worktree of
  an older commit built with ``python3 setup.py build_ext --inplace``) are measured
  interleaved in one run.

Measured, interleaved over the rounds (the order rotates each round):

1. message rate of ``smtp-source -s 20 -m N -l 1000`` (a new connection per
   message) and the relay's CPU per message: utime + stime of its whole process
   tree from /proc (live processes and the reaped children they account for);
2. the delivered count at each sink (smtp-sink ``-c``), after every run: a lost
   message makes the run fail;
3. added latency per lock-step command: a client sending HELO, MAIL, RCPT, DATA,
   the message and QUIT one at a time, timing each reply; p50/p99 through the
   relay minus the same through ``direct``;
4. one big message (100 MB) through HAProxy, nginx and each smtpguard variant:
   throughput and RSS growth (the tree's VmHWM after it, reset with clear_refs,
   minus the RSS before it);

and once at the end, idle sessions: ``--idle`` connections that have read the
greeting, the relay tree's RSS growth divided by their number.

nginx (Debian ``nginx`` + ``libnginx-mod-mail``) is apt-get installed when missing,
Haraka is npm installed into ``--cache`` (never into the repository). Everything
listens and connects on 127.0.0.1 with IP literals; ``--check-loopback`` runs each
peer under ``strace -f`` and fails if any connect/sendto leaves loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    LOOPBACK,
    free_port,
    message_rate,
    need,
    rss_kib,
    send_big,
    start_gateway,
    stop,
    wait_port,
)

CONF = Path(__file__).resolve().parent / "peers_conf"
TICK = os.sysconf("SC_CLK_TCK")
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
DEFAULT_RELAYS = (
    "direct,haproxy,nginx-w1,nginx-w2,haraka-n1,haraka-n2,mailguard-w1,mailguard-w2,esmtp-w2"
)
SENDER, RECIPIENT = "bench@example.org", "sink@example.net"
# MODE-wN@SRC: that smtpguard from another source tree (PYTHONPATH=SRC, e.g. a build
# made with ``python3 setup.py build_ext --inplace`` in a worktree of an older commit),
# so two builds are measured interleaved in one run.
RELAY_RE = re.compile(
    r"^(direct|haproxy|nginx-w[1-9]|haraka-n[1-9]|(mailguard|esmtp)-w[1-9](@[^,@]+)?)$"
)


# ---------------------------------------------------------------- processes


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(root: int) -> tuple[float, float]:
    """User and system CPU seconds of a process tree, reaped children included."""
    user = system = 0.0
    for pid in tree_pids(root):
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        user += (int(f[11]) + int(f[13])) / TICK
        system += (int(f[12]) + int(f[14])) / TICK
    return user, system


def tree_rss(root: int, field_name: str = "VmRSS") -> dict[int, int]:
    out = {}
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, KeyError):
            out[pid] = rss_kib(pid, field_name)
    return out


def reset_peak(root: int) -> None:
    """Reset VmHWM of every process of the tree to its current RSS (Linux >= 4.0)."""
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---------------------------------------------------------------- sinks and relays


class Sink:
    """smtp-sink with ``-c``: its running counters go to a file read on demand."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.counts = workdir / f"sink-{name}.counts"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with self.counts.open("wb") as out:
            self.proc = subprocess.Popen(
                [need("smtp-sink"), *user, "-c", "-m", "20000", f"{LOOPBACK}:{self.port}", "1024"],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        wait_port(self.port, self.proc)
        self.expected = 0

    def delivered(self) -> int:
        with self.counts.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))
            tail = f.read()
        found = re.findall(rb"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def check(self, relay: str, wait: float = 10) -> None:
        """Fail unless the sink has received every message sent so far (its counter
        file is written as smtp-sink goes: allow ``wait`` seconds for the last)."""
        deadline = time.monotonic() + wait
        got = self.delivered()
        while got < self.expected and time.monotonic() < deadline:
            time.sleep(0.1)
            got = self.delivered()
        if got != self.expected:
            raise LostMessages(f"{relay}: its smtp-sink received {got} of {self.expected} messages")


class LostMessages(RuntimeError):
    pass


@dataclass
class Relay:
    name: str
    sink: Sink
    port: int
    proc: subprocess.Popen[bytes] | None
    build: str
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)


def render(template: Path, dest: Path, **values: object) -> None:
    dest.write_text(string.Template(template.read_text()).substitute(values))


def version(cmd: list[str], pattern: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def launch(
    cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None, timeout: float = 15
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (stderr to ``log``) and wait until ``port`` accepts connections."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_port(port, proc, timeout)
    except (RuntimeError, TimeoutError) as e:
        if proc.poll() is None:
            stop(proc)
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{Path(cmd[0]).name}: {e}; stderr: {' | '.join(tail)}") from None
    return proc


def start_haproxy(sink: Sink, workdir: Path, wrap: list[str]) -> Relay:
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    render(CONF / "haproxy.cfg", cfg, port=port, upstream=sink.port)
    proc = launch([*wrap, need("haproxy"), "-db", "-f", str(cfg)], port, workdir / "haproxy.err")
    build = "HAProxy " + version([need("haproxy"), "-v"], r"version (\S+)")
    return Relay("haproxy", sink, port, proc, build)


def start_nginx(name: str, workers: int, sink: Sink, workdir: Path, wrap: list[str]) -> Relay:
    port, auth_port = free_port(), free_port()
    d = workdir / name
    d.mkdir()
    cfg = d / "nginx.conf"
    render(
        CONF / "nginx.conf",
        cfg,
        module=NGINX_MODULE,
        workers=workers,
        dir=d,
        auth_port=auth_port,
        upstream=sink.port,
        port=port,
    )
    nginx = need("nginx")
    cmd = [*wrap, nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(cfg)]
    proc = launch(cmd, port, d / "stderr")
    build = "nginx " + version([nginx, "-v"], r"nginx/(\S+)")
    return Relay(name, sink, port, proc, build)


def start_haraka(
    name: str, nodes: int, sink: Sink, workdir: Path, haraka: Path, wrap: list[str]
) -> Relay:
    port = free_port()
    d = workdir / name
    # Haraka's shipped defaults (as ``haraka -i`` would copy them), then ours on top:
    # the plugins list is ours alone.
    shutil.copytree(haraka / "config", d / "config")
    for src in (CONF / "haraka").rglob("*"):
        if src.is_file():
            dest = d / src.relative_to(CONF / "haraka")
            dest.parent.mkdir(parents=True, exist_ok=True)
            render(src, dest, port=port, nodes=nodes, upstream=sink.port)
    cmd = [*wrap, need("node"), str(haraka / "bin" / "haraka"), "-c", str(d)]
    proc = launch(cmd, port, d / "stderr", timeout=60)
    pkg = json.loads((haraka / "package.json").read_text())
    return Relay(name, sink, port, proc, f"Haraka {pkg['version']}")


def gateway_env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def gateway_build(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import smtpguard; print(smtpguard.core_build())"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return out.stdout.strip()


def start_smtpguard(
    name: str,
    sink: Sink,
    workdir: Path,
    env: dict[str, str],
    build: str,
    wrap: list[str],
    no_log: bool = False,
) -> Relay:
    base, _, src = name.partition("@")
    if src:
        env = gateway_env(src)
        build = gateway_build(env)
    mode, _, workers = base.partition("-w")
    log = () if no_log else ("--protocol-log", str(workdir / f"{_file(name)}.log"))
    extra = (
        *log,
        "--protocol-log-format",
        "ims",
        "--hostname",
        "bench.localhost",
        "--max-sessions",
        "20000",
    )
    if wrap:  # run.start_gateway has no wrapper: the loopback check starts it itself
        port = free_port()
        cmd = [sys.executable, "-m", "smtpguard", "serve", "--listen", f"{LOOPBACK}:{port}"]
        cmd += ["--upstream", f"{LOOPBACK}:{sink.port}", "--mode", mode, "--workers", workers]
        proc = launch([*wrap, *cmd, *extra], port, workdir / f"{_file(name)}.err", env=env)
    else:
        proc, port = start_gateway(sink.port, mode, int(workers), env=env, extra=extra)
    return Relay(name, sink, port, proc, f"smtpguard {build}{', no log' if no_log else ''}")


def _file(name: str) -> str:
    """A relay's name as part of a file name (``esmtp-w2@/tmp/old/src``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def start_relay(name: str, workdir: Path, args: argparse.Namespace, wrap: list[str]) -> Relay:
    sink = Sink(workdir, _file(name))
    try:
        if name == "direct":
            return Relay(name, sink, sink.port, None, "smtp-sink")
        if name == "haproxy":
            return start_haproxy(sink, workdir, wrap)
        if name.startswith("nginx-w"):
            return start_nginx(name, int(name[7:]), sink, workdir, wrap)
        if name.startswith("haraka-n"):
            return start_haraka(name, int(name[8:]), sink, workdir, args.haraka, wrap)
        return start_smtpguard(
            name, sink, workdir, args.gateway_env, args.gateway_build, wrap, args.no_protocol_log
        )
    except BaseException:
        stop(sink.proc)
        raise


def stop_relay(relay: Relay) -> None:
    """Stop the relay's whole process tree, then its sink. SIGTERM to the root alone is
    not enough: a strace wrapper exits and leaves its tracee running, and a cluster
    master killed after its grace period leaves its workers."""
    if relay.proc is not None and relay.proc.poll() is None:
        pids = tree_pids(relay.proc.pid)[1:]
        stop(relay.proc)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in pids if _alive(p)]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = [p for p in pids if _alive(p)]
    stop(relay.sink.proc)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------- installs


def ensure_nginx(allow: bool) -> None:
    missing = []
    if shutil.which("nginx", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")) is None:
        missing.append("nginx")
    if not NGINX_MODULE.is_file():
        missing.append("libnginx-mod-mail")
    if not missing:
        return
    if not allow:
        raise SystemExit(f"peers.py: {' and '.join(missing)} not installed (--no-install given)")
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(apt, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(apt, env=env, check=True)


def ensure_haraka(cache: Path, allow: bool) -> Path:
    haraka = cache / "node_modules" / "Haraka"
    if (haraka / "bin" / "haraka").is_file():
        return haraka
    if not allow:
        raise SystemExit(f"peers.py: Haraka not installed in {cache} (--no-install given)")
    if shutil.which("npm") is None:
        raise SystemExit("peers.py: Haraka needs node and npm: apt-get install nodejs npm")
    print(f"installing Haraka with npm into {cache}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache), "Haraka@3"],
        check=True,
    )
    return haraka


# ---------------------------------------------------------------- workloads


def reply(sock: socket.socket) -> bytes:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a reply")
        buf += chunk
        last = buf.rstrip(b"\r\n").rpartition(b"\r\n")[2]
        if buf.endswith(b"\r\n") and (len(last) == 3 or last[3:4] == b" "):
            return buf


BODY = b"Subject: latency\r\n\r\n" + b"x" * 70 + b"\r\n"
LOCKSTEP = (
    b"HELO bench.localhost\r\n",
    f"MAIL FROM:<{SENDER}>\r\n".encode(),
    f"RCPT TO:<{RECIPIENT}>\r\n".encode(),
    b"DATA\r\n",
    BODY * 12 + b".\r\n",
    b"QUIT\r\n",
)


def lockstep(port: int, sessions: int) -> list[float]:
    """Seconds from each command's send to its complete reply, over ``sessions``."""
    times = []
    for _ in range(sessions):
        with socket.create_connection((LOOPBACK, port), 10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reply(s)
            for cmd in LOCKSTEP:
                t0 = time.perf_counter()
                s.sendall(cmd)
                r = reply(s)
                times.append(time.perf_counter() - t0)
                if r[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"port {port}: {cmd[:4]!r} refused: {r!r}")
    return times


def idle_sessions(relay: Relay, count: int) -> float:
    """KiB of relay RSS per idle session that has been greeted."""
    assert relay.proc is not None
    before = sum(tree_rss(relay.proc.pid).values())
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection((LOOPBACK, relay.port), 10)
            socks.append(s)
            s.settimeout(10)
            reply(s)
        time.sleep(1)
        after = sum(tree_rss(relay.proc.pid).values())
    finally:
        for s in socks:
            s.close()
    return (after - before) / count


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# ---------------------------------------------------------------- the run


def rate_run(relay: Relay, messages: int, args: argparse.Namespace) -> None:
    c0 = tree_cpu(relay.proc.pid) if relay.proc else (0.0, 0.0)
    rate = message_rate(relay.port, messages, args.sessions, args.size)
    c1 = tree_cpu(relay.proc.pid) if relay.proc else (0.0, 0.0)
    relay.sink.expected += messages
    relay.sink.check(relay.name)
    relay.add("rate", rate)
    relay.add("user_us", (c1[0] - c0[0]) * 1e6 / messages)
    relay.add("sys_us", (c1[1] - c0[1]) * 1e6 / messages)


def big_run(relay: Relay, mb: int) -> None:
    send_big(relay.port, 1)  # warm-up: buffers and code paths in place
    relay.sink.expected += 1
    if relay.proc is not None:
        reset_peak(relay.proc.pid)
        base = tree_rss(relay.proc.pid)
    rate = send_big(relay.port, mb)
    relay.sink.expected += 1
    if relay.proc is not None:
        peak = tree_rss(relay.proc.pid, "VmHWM")
        grow = sum(max(0, peak[p] - base.get(p, peak[p])) for p in peak)
        relay.add("big_rss_mib", grow / 1024)
    relay.add("big_mbs", rate)
    relay.sink.check(relay.name)


def measure(relays: list[Relay], args: argparse.Namespace) -> None:
    for relay in relays:
        rate_run(relay, args.warmup, args)  # warm-up, counted at the sink too
    # Idle sessions before the rounds: the relays' heaps and free lists are then close
    # to what a fresh process has, not full of what the rate runs left behind.
    if args.idle:
        for relay in relays:
            if relay.proc is not None:
                relay.add("idle_kib", idle_sessions(relay, args.idle))
                print(f"idle: {relay.name:13s} {relay.samples['idle_kib'][-1]:5.1f} KiB/session")
                time.sleep(2)  # let the relay close them before the next one opens its own
    for r in range(args.rounds):
        shift = r % len(relays)
        for relay in relays[shift:] + relays[:shift]:
            rate_run(relay, args.messages, args)
            times = lockstep(relay.port, args.latency_sessions)
            relay.sink.expected += args.latency_sessions
            relay.sink.check(relay.name)
            relay.samples.setdefault("latency", []).extend(times)
            line = (
                f"round {r + 1}: {relay.name:13s} {relay.samples['rate'][-1]:7.0f} msg/s"
                f"  relay {relay.samples['user_us'][-1] + relay.samples['sys_us'][-1]:5.0f}"
                f" us/msg  lock-step p50 {percentile(times, 50) * 1e6:5.0f} us"
            )
            if args.big_mb and big_target(relay.name):
                big_run(relay, args.big_mb)
                line += f"  {args.big_mb} MB {relay.samples['big_mbs'][-1]:6.1f} MB/s"
            print(line, flush=True)


def big_target(name: str) -> bool:
    return not name.startswith("haraka")  # Haraka refuses over 25 MB by default


def summary(relays: list[Relay], args: argparse.Namespace) -> dict[str, dict[str, float | str]]:
    med = statistics.median
    direct = next((r for r in relays if r.name == "direct"), None)
    base = {"p50": 0.0, "p99": 0.0}
    if direct is not None:
        base = {
            "p50": percentile(direct.samples["latency"], 50),
            "p99": percentile(direct.samples["latency"], 99),
        }
    out: dict[str, dict[str, float | str]] = {}
    for r in relays:
        s = r.samples
        row: dict[str, float | str] = {
            "build": r.build,
            "msg_per_s": med(s["rate"]),
            "cpu_us_per_msg": med(u + y for u, y in zip(s["user_us"], s["sys_us"], strict=True)),
            "user_us_per_msg": med(s["user_us"]),
            "sys_us_per_msg": med(s["sys_us"]),
            "latency_p50_us": percentile(s["latency"], 50) * 1e6,
            "latency_p99_us": percentile(s["latency"], 99) * 1e6,
            "added_p50_us": (percentile(s["latency"], 50) - base["p50"]) * 1e6,
            "added_p99_us": (percentile(s["latency"], 99) - base["p99"]) * 1e6,
            "delivered": r.sink.delivered(),
        }
        if "idle_kib" in s:
            row["idle_kib_per_session"] = s["idle_kib"][-1]
        if "big_mbs" in s:
            row["big_mb_per_s"] = med(s["big_mbs"])
        if "big_rss_mib" in s:
            row["big_rss_growth_mib"] = max(s["big_rss_mib"])
        out[r.name] = row
    return out


def print_tables(rows: dict[str, dict[str, float | str]], args: argparse.Namespace) -> None:
    hap = rows.get("haproxy")

    def ratio(name: str, key: str) -> str:
        if hap is None or key not in rows[name] or key not in hap:
            return "-"
        return f"{float(rows[name][key]) / float(hap[key]):.2f}"

    print(
        f"\nsmtp-source -s {args.sessions} -m {args.messages} -l {args.size}, "
        f"median of {args.rounds} round(s); lock-step: {args.latency_sessions} sessions x 6 "
        f"commands per round; idle: {args.idle} sessions; big: {args.big_mb} MB\n"
    )
    big = f"{args.big_mb} MB" if args.big_mb else "big message"
    print(
        "| relay | build | msg/s vs HAProxy | CPU/msg vs HAProxy | added p50 / p99 latency "
        f"(us; direct: p50 / p99) | idle KiB/session | {big} vs HAProxy | {big} RSS growth |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        # p99 as measured: a difference of two tails is mostly noise on a shared machine
        p50 = row["latency_p50_us" if name == "direct" else "added_p50_us"]
        lat = f"{p50:.0f} / {row['latency_p99_us']:.0f}"
        idle = f"{row['idle_kib_per_session']:.1f}" if "idle_kib_per_session" in row else "-"
        grow = f"{row['big_rss_growth_mib']:.1f} MiB" if "big_rss_growth_mib" in row else "-"
        cpu = "-" if name == "direct" else ratio(name, "cpu_us_per_msg")
        print(
            f"| {name} | {row['build']} | {ratio(name, 'msg_per_s')} | {cpu} | {lat} | {idle} "
            f"| {ratio(name, 'big_mb_per_s')} | {grow} |"
        )
    print("\nabsolute:")
    for name, row in rows.items():
        big = f"{row['big_mb_per_s']:6.1f} MB/s" if "big_mb_per_s" in row else "    -     "
        print(
            f"  {name:13s} {row['msg_per_s']:7.0f} msg/s  relay {row['cpu_us_per_msg']:5.0f} us/msg"
            f" (user {row['user_us_per_msg']:4.0f}, sys {row['sys_us_per_msg']:4.0f})"
            f"  lock-step p50 {row['latency_p50_us']:5.0f} p99 {row['latency_p99_us']:6.0f} us"
            f"  big {big}  delivered {row['delivered']}"
        )


# ---------------------------------------------------------------- loopback check

ADDR_RE = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def check_loopback(names: list[str], workdir: Path, args: argparse.Namespace) -> int:
    """Run each relay under strace; every connect/sendto/sendmsg must stay on loopback."""
    strace = need("strace")
    bad = 0
    for name in names:
        if name == "direct":
            continue
        trace = workdir / f"{_file(name)}.strace"
        wrap = [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace)]
        relay = start_relay(name, workdir, args, wrap)
        try:
            message_rate(relay.port, 200, 5, args.size)
            lockstep(relay.port, 5)
            time.sleep(1)
        finally:
            stop_relay(relay)
        addrs: set[str] = set()
        for line in trace.read_text(errors="replace").splitlines():
            for v4, v6 in ADDR_RE.findall(line):
                addrs.add(v4 or v6)
        outside = sorted(a for a in addrs if not (a.startswith("127.") or a == "::1"))
        print(
            f"{name:13s} addresses contacted: {', '.join(sorted(addrs)) or 'none'}"
            f"  {'NOT LOOPBACK: ' + ', '.join(outside) if outside else '(loopback only)'}"
        )
        bad += bool(outside)
    return 1 if bad else 0


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000, help="per relay per round")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    ap.add_argument("--size", type=int, default=1000, help="smtp-source -l")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=500, help="messages per relay first")
    ap.add_argument("--relays", default=DEFAULT_RELAYS, help=f"default {DEFAULT_RELAYS}")
    ap.add_argument("--latency-sessions", type=int, default=200, help="per relay per round")
    ap.add_argument("--idle", type=int, default=5000, help="idle sessions (0: skip)")
    ap.add_argument("--big-mb", type=int, default=100, help="big message size (0: skip)")
    ap.add_argument(
        "--gateway-src",
        help="run smtpguard from this src/ directory (PYTHONPATH); default: as installed",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "smtpguard-bench" / "haraka",
        help="where Haraka is npm installed",
    )
    ap.add_argument(
        "--no-protocol-log",
        action="store_true",
        help="run smtpguard without its IMS protocol log (to see what it costs)",
    )
    ap.add_argument("--no-install", action="store_true", help="fail instead of installing")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--check-loopback",
        action="store_true",
        help="only run each relay under strace and check it contacts loopback only",
    )
    args = ap.parse_args()
    names = args.relays.split(",")
    wrong = [n for n in names if not RELAY_RE.match(n)]
    if wrong:
        ap.error(f"--relays: unknown {', '.join(wrong)}")
    if args.idle:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and args.idle * 2 + 100 > hard:
            ap.error(
                f"--idle {args.idle}: needs about {args.idle * 2 + 100} descriptors, "
                f"ulimit -Hn is {hard}"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the relays
    if any(n.startswith("nginx") for n in names):
        ensure_nginx(not args.no_install)
    if any(n.startswith("haraka") for n in names):
        args.haraka = ensure_haraka(args.cache, not args.no_install)
    args.gateway_env = gateway_env(args.gateway_src)
    args.gateway_build = gateway_build(args.gateway_env)
    if any(n.startswith(("mailguard", "esmtp")) for n in names):
        print(f"smtpguard core: {args.gateway_build} (from {args.gateway_src or 'the install'})")

    with tempfile.TemporaryDirectory(prefix="smtpguard-peers-") as tmp:
        workdir = Path(tmp)
        if args.check_loopback:
            return check_loopback(names, workdir, args)
        relays: list[Relay] = []
        try:
            for name in names:
                relays.append(start_relay(name, workdir, args, []))
            measure(relays, args)
            rows = summary(relays, args)
        except LostMessages as e:
            print(f"\nLOST MESSAGES: {e}", file=sys.stderr)
            return 1
        finally:
            for relay in relays:
                stop_relay(relay)
    print_tables(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": sys.argv[1:], "relays": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
