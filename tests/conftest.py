"""For every test folder: tests/ itself on sys.path, for the helpers shared across folders (process_helpers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
