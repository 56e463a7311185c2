"""python -m tests.fuzz: the mutation fuzzer (tests.fuzz.fuzzer)."""

import sys

from tests.fuzz.fuzzer import main

sys.exit(main())
