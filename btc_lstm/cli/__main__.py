"""Allow `python -m btc_lstm.cli`."""

import sys

from btc_lstm.cli import main

sys.exit(main())
