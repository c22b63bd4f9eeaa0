"""The event loop and the daemon around the protocol machine (work in progress)."""
