import sys

from bpfnfs.cli.main import main

sys.exit(main())
