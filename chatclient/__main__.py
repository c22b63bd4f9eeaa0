"""``python -m chatclient``: run the terminal client (the same as ``chat-client``).

Readable by any Python, like ``__init__.py``: ``main`` checks the version.
"""

import sys

from chatclient import main

sys.exit(main())
