"""The chat protocol as a pure state machine (work in progress)."""

__version__ = "0.1.0"
