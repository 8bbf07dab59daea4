"""The event IDs of the configuration's own life (docs/events.md): a reload applied or
refused, and a reload that changed settings only a restart applies. Here, not in the
gateway that logs them, so that the configuration's docs can name them without
importing the gateway."""

from __future__ import annotations

CONFIG_RELOADED = "SG-CONFIG-RELOADED"
CONFIG_REFUSED = "SG-CONFIG-REFUSED"
CONFIG_NEEDS_RESTART = "SG-CONFIG-NEEDS-RESTART"
