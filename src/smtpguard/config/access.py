"""Who may connect: the access policy as plain, immutable data from the config file.

:class:`AccessPolicy` is what ``[access]`` (and the networks given for ``smuggling =
"normalize"`` and the PROXY protocol) load into; the gateway's
:mod:`~smtpguard.gateway.access` enforces it. It lives with the configuration so that
loading a file never imports the gateway (docs/design.md#architecture).

Network matching is most-specific-wins: the longest ``allow`` or ``deny`` prefix that
contains the address decides (a tie goes to ``deny``). An address that matches neither
list is allowed when ``allow`` is empty, else refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Event IDs of the refusals this policy causes (documented in docs/events.md).
DENIED = "SG-ACCESS-DENIED"
SESSION_CAP = "SG-ACCESS-SESSION-CAP"
RATE_LIMITED = "SG-ACCESS-RATE-LIMIT"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    max_sessions_per_ip: int = 0  # 0: no per-address cap
    connection_rate: int = 0  # connections per address per rate_period; 0: off
    rate_period: float = 60.0
    normalize_networks: tuple[Network, ...] = ()  # smuggling = normalize for these
    proxy_from: tuple[Network, ...] = ()  # load balancers that send a PROXY header

    def expects_proxy(self, ip: Address | None) -> bool:
        return ip is not None and longest_prefix(self.proxy_from, ip) >= 0

    def permits(self, ip: Address | None) -> bool:
        if ip is None:  # not an IP peer (e.g. a Unix socket): local, trusted
            return True
        allow = longest_prefix(self.allow, ip)
        deny = longest_prefix(self.deny, ip)
        if deny >= 0 and deny >= allow:
            return False
        return allow >= 0 or not self.allow

    def normalizes(self, ip: Address | None) -> bool:
        return ip is not None and longest_prefix(self.normalize_networks, ip) >= 0


def longest_prefix(networks: tuple[Network, ...], ip: Address) -> int:
    """Prefix length of the most specific network containing ``ip``; -1 if none."""
    best = -1
    for net in networks:
        if net.version == ip.version and ip in net and net.prefixlen > best:
            best = net.prefixlen
    return best
