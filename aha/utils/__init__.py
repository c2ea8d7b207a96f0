"""Generic helpers every layer may import (they import nothing else of aha): a name registry, atomic
file writes and JSONL logs, small statistics, the console."""
