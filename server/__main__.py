"""`python -m server`: serve the models of MODEL_DIR over gRPC."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up noise out of the log

from server.app import main  # noqa: E402

sys.exit(main())
