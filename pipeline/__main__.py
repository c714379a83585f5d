import os
import sys

from pipeline.cli import EXIT_INTERRUPTED, main

code = main()
if code in EXIT_INTERRUPTED.values():
    # Interrupted: the clean-up has run. Leave now with the documented code (130 / 143): an interpreter shutdown
    # after a signal landed inside TensorFlow's import was once seen to end the process by SIGINT instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
