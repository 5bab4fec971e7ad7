"""`python -m anycast_agent` is the `anycast-agent` command."""

import sys

from anycast_agent.cli import main

sys.exit(main())
