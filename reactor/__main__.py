"""``python -m reactor``: run the chat server (the same as ``chat-server``)."""

import sys

from .daemon import main

sys.exit(main())
