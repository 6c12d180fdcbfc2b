import sys

from lcssm.cli import main

sys.exit(main())
