"""`python -m twin serve ...`: the twin without the rest of topo's CLI (what a node runs when it has no `topo`)."""

from __future__ import annotations

import sys

from common.errors import TopoError
from twin.launch import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except TopoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
