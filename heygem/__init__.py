"""heygem: a talking-head lip-sync generation pipeline that cannot hang silently."""

__version__ = "0.1.0"
