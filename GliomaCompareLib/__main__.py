import sys

from GliomaCompareLib.cli import main

sys.exit(main())
