"""``python -m chatclient``: run the terminal client (the same as ``chat-client``)."""

import sys

from chatclient import main

sys.exit(main())
