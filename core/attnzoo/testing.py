"""The conformance kit under its public name: ``from attnzoo.testing import check_variant``.

The kit lives in ``attnzoo.contract.kit``, which is also what the ``pytest11`` entry point
loads (it provides the ``attnzoo_check`` fixture).
"""

from attnzoo.contract.kit import CHECKS, CheckFailed, Report, check_variant, explicit_output

__all__ = ["CHECKS", "CheckFailed", "Report", "check_variant", "explicit_output"]
