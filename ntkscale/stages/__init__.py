"""The run, stage by stage: ``gram`` (the Gram store), ``solve``, ``predict``, over one
:class:`~ntkscale.stages.context.RunContext`; :class:`~ntkscale.stages.run.RunPipeline`
runs them all (``ntkscale run``). ``plan``, ``report`` and ``demo`` serve the CLI commands
of the same names."""
