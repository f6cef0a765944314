"""The auditor's side: verify a release and measure how much each cipher hides.

`audit.metrics` scores attacks; `audit.attacks` holds the attacks themselves.
"""
from __future__ import annotations
