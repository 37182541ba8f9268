"""The non-local block conformance suite (spec: spec/conformance.md; guide: docs/conformance.md).

Run it with ``pytest conformance --backend=NAME`` from a checkout, or
``pytest --pyargs nonlocal_conformance --backend=NAME`` after ``pip install``.
"""
