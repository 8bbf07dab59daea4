"""``python -m smtpguard``: same as the ``smtpguard`` console script."""

import sys

from smtpguard.cli import main

sys.exit(main())
