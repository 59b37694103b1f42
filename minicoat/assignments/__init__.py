"""Course assignments built on minicoat: student notebooks, autograded checks, a generator.

* ``sources/``: the assignments, jupytext percent notebooks with nbgrader-style solution and
  hidden-test markers (A1 depthwise convolution and its VJP, A2 relative attention, A3 the
  MBConv block, A4 one training step with AdamW);
* ``checks``: the check functions the notebooks call, grading a student's function against
  minicoat and the PyTorch oracle with messages that say what is wrong;
* ``build``: ``minicoat assignments build OUT`` writes the student notebooks and the
  autograder (``python -m minicoat.assignments build OUT`` does the same);
* ``grading``: what the generated autograder runs.

See docs/teaching.md.
"""
