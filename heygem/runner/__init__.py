"""The staged runner: bounded channels, heartbeats, a watchdog, clean cancellation."""
