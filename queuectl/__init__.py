"""queuectl: a durable background job queue for shell commands on Linux."""

__version__ = "0.4.0"
