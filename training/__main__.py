import sys

from training.cli import main

sys.exit(main(["train"] + sys.argv[1:] if len(sys.argv) < 2 or sys.argv[1].startswith("-")
              else sys.argv[1:]))
