import sys

from ssdecode.cli.main import main

sys.exit(main())
