"""taskpipe."""
