"""The whole comparison run: ``gliomacompare run CONFIG --out RUN``.

Modules (read in this order):

- :mod:`.config`: run configs (presets, ``extends``, ``--set``) parsed once into a typed,
  frozen :class:`~.config.RunConfig`;
- :mod:`.runner`: the staged, resumable, shardable :class:`~.runner.StageRunner`;
- :mod:`.stages`: one module per stage, each ending with its ``Stage``;
- :mod:`.run`: :func:`~.run.run_comparison`, the stage list, the progress display, the manifest;
- :mod:`.cohort`, :mod:`.outputs`, :mod:`.aggregate`, :mod:`.case_files`: what the stages read
  back from the run folder, and the ``metrics`` stage's tables and ``cases/`` folder;
- :mod:`.manifest`: versions, seeds, device; :mod:`.commands`: the ``run`` and ``demo`` commands.
"""
