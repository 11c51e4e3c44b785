"""Textual terminal UI of tui-tuner: live view and control of a running Sweep."""
