"""MAIL and RCPT: envelope checks and ESMTP parameter rules, verdicts applied."""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.checks import Finding, check_mail, check_rcpt
from smtpguard.core.ehlo import parameter_refused_reply, refused_parameter
from smtpguard.core.policy import Verdict
from smtpguard.core.upstream import UpstreamLink


class EnvelopeChecks(UpstreamLink):
    def _envelope_refused(self, verb: str, args: str, now: float) -> bool:
        """Run the MAIL/RCPT checks; True when the command must not be forwarded."""
        checks = self.policy.checks
        if verb == "MAIL":
            self._rcpt_count = 0
            found, _, params = check_mail(args, checks)
        else:
            if self._rcpt_blocked:
                self._local_reply(verb, replies.TOO_MANY_INVALID)
                return True
            self._rcpt_count += 1
            found, params = check_rcpt(args, checks, self._rcpt_count)
        if found is not None and self._enforce(found, verb, now):
            return True
        param = refused_parameter(verb, params, self._shown) if params else None
        if param is not None:
            self._policy_event(
                "SG-ESMTP-PARAM", f"{verb} parameter {param} of an extension not offered", "reject"
            )
            self._local_reply(verb, parameter_refused_reply(param))
            return True
        return False

    def _enforce(self, f: Finding, verb: str, now: float, after: bool = False) -> bool:
        """Apply a command finding's verdict; True when the command is not forwarded.
        ``after``: the command was already relayed (a check on the server's reply)."""
        verdict = f.verdict
        if verdict is Verdict.RATE_LIMIT:
            verdict = Verdict.LOG if self._within_rate(f, now) else Verdict.REJECT
        self._policy_event(f.event_id, f.message, verdict.value)
        if verdict is Verdict.LOG:
            return False
        self.commands_refused += 1
        if verdict is Verdict.REJECT:
            if after:
                self._rcpt_blocked = True
            else:
                self._local_reply(verb, f.reply)
        elif verdict is Verdict.DROP and after:
            # Decided on a server reply: commands pipelined behind it are not
            # answered, whatever the timing, so the outcome never depends on it.
            self._abort_with(replies.dropped(f.message))
        elif verdict is Verdict.DROP:
            self._close_after(replies.dropped(f.message))
        else:
            self._reset_both()
        return True
