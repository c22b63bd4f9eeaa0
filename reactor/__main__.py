"""``python -m reactor``: run the chat server (the same as ``chat-server``).

Python runs ``reactor/__init__.py`` before this file, and it has already
refused a Python older than 3.10 (one line, exit status 2).
"""

import sys

from .daemon import main

sys.exit(main())
