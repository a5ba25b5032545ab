"""The parent side at run time: start, follow, restart and stop processes; logs and events."""
