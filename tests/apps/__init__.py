"""Test apps the sidecar delivers to: real processes that record what they get and answer per a script."""
