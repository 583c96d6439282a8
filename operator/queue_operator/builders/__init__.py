"""Kubernetes objects built from specs by pure functions: spec in, object out, no API calls.

The operator's runtime sets owner references and applies what these return.
"""
