"""`python -m ssl_zoo.cli ...` is `ssl-zoo ...`."""

import sys

from ssl_zoo.cli.main import main

sys.exit(main())
