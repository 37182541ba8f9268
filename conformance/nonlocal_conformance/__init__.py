"""The non-local block conformance suite (see docs/conformance.md)."""
