import sys

if "--hosts" in sys.argv[1:]:
    from fapiao_stack.cluster import main
else:
    from fapiao_stack.stack import main

sys.exit(main([arg for arg in sys.argv[1:] if arg != "--hosts"]))
