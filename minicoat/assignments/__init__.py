"""Course assignments built on minicoat: student notebooks, autograded checks, a generator.

* ``sources/``: the assignments, jupytext percent notebooks with nbgrader-style solution and
  hidden-test markers (A1 depthwise convolution and its VJP, A2 relative attention, A3 the
  MBConv block and BatchNorm's VJP, A4 one training step with AdamW, A5 the Transformer
  block with LayerNorm's and attention's VJPs);
* ``checks``: the check functions the notebooks call, one module per assignment, grading a
  student's function against minicoat, the PyTorch oracle and finite differences with
  messages that say what is wrong, and failing a function that calls the library's own
  implementation or changes the checks (``checks.guard``);
* ``build``: ``minicoat assignments build OUT`` writes the student notebooks and the
  autograder (``python -m minicoat.assignments build OUT`` does the same);
* ``grading``: what the generated autograder runs: the notebook's definitions, checked in a
  fresh process;
* ``nbgrader_checks``: the same for ``nbgrader autograde`` (an autograde preprocessor).

See docs/teaching.md.
"""
