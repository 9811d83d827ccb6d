"""`python -m poolctl.localserver --server-id ID --state-dir DIR [--port 0] [--host 127.0.0.1] [--count N]`."""

import sys

from poolctl.localserver.server import main

if __name__ == "__main__":
    sys.exit(main())
