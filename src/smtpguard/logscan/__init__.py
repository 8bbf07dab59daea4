"""smtpguard logscan."""
