"""python -m hollow: see hollow.main."""

import sys

from hollow.main import main

sys.exit(main())
