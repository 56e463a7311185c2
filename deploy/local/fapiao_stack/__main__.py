import sys

from fapiao_stack.stack import main

sys.exit(main(sys.argv[1:]))
