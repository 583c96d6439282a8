"""The local demo: real servers, the sidecar, and a sample app receiving messages."""
