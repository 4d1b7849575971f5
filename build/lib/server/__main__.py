"""`python -m server`: serve the models of MODEL_DIR over gRPC."""

from __future__ import annotations

import sys

from server.app import main  # server/__init__.py sets TensorFlow's environment first

sys.exit(main())
