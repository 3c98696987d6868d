"""python -m node.daemon --config FILE: the same as `ctlab node --config FILE`."""

import sys

from node.daemon.cli import node_main

sys.exit(node_main(sys.argv[1:]))
