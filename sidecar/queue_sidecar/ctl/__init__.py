"""``queuectl``: the command line for people (SPEC section 7); see docs/queuectl.md."""
