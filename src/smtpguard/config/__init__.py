"""Configuration: the TOML file, its schema, validation with located errors.

``load(path, overrides)`` returns :class:`~smtpguard.config.load.Settings` or raises
:class:`~smtpguard.config.load.ConfigError` with a one-line message naming the file,
line, key, value and what was expected. ``check-config`` lives with ``serve``
(:mod:`smtpguard.gateway.checkconfig`): it runs serve's start-up checks too.
``python -m smtpguard.config.docs`` writes the key reference (docs/config.md) from
the schema.
"""
