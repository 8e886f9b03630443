"""Every pipeline step is a function (and a ``retrieval`` command, :mod:`retrieval.cli.step_commands`).

Each module here holds one step: a configuration (a :class:`retrieval.core.config.Config`) and a function
``main(conf, ...) -> Path`` that runs it and returns the path it wrote; no argument parsing (that is the
command line's, :mod:`retrieval.cli`)::

    retrieval extract ...          retrieval.steps.extract    images -> local store / global feature file
    retrieval encode ...           retrieval.steps.encode     local store -> global feature file (BoW/VLAD/Fisher)
    retrieval index build ...      retrieval.steps.index      global feature file -> index
    retrieval search ...           retrieval.steps.search     index x query feature file -> ranking
    retrieval rerank ...           retrieval.steps.rerank     ranking + local evidence -> ranking
    retrieval evaluate ...         retrieval.steps.evaluate   ranking x dataset -> metrics JSON
    retrieval run EXPERIMENT       retrieval.experiments.run        an experiment file -> results/

A step reads and writes files only (HDF5 feature files, ``.npz`` indexes, JSON rankings), so the same
chain runs from the shell, from Python, or inside an experiment protocol (:mod:`retrieval.experiments.chain`,
kind ``retrieval``). The command line imports a step only when its command runs.
"""
