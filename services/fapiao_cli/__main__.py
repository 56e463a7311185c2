import sys

from fapiao_cli.main import main

sys.exit(main())
