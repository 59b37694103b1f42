"""Comparison helpers shared by the tests: trees of arrays against each other, normwise.

They live in ``minicoat.testing`` (for the users' own tests too); imported here so that the
test files keep one place to get them from.
"""

from minicoat.testing import assert_trees_close, tree_errors

__all__ = ["assert_trees_close", "tree_errors"]
