"""Diagnostics for heygem-harness: watchdogs, the environment doctor, live inspection."""
