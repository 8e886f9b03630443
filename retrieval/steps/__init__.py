"""Every pipeline step is a command and a function.

Each module here holds one step: a configuration (a :class:`retrieval.config.Config`), a function
``main(conf, ...) -> Path`` that runs it and returns the path it wrote, and ``register(subparsers)``
that makes it a ``retrieval`` command (listed in :data:`retrieval.cli.COMMAND_GROUPS`)::

    retrieval extract ...          retrieval.steps.extract    images -> local store / global feature file
    retrieval encode ...           retrieval.steps.encode     local store -> global feature file (BoW/VLAD/Fisher)
    retrieval index build ...      retrieval.steps.index      global feature file -> index
    retrieval search ...           retrieval.steps.search     index x query feature file -> ranking
    retrieval rerank ...           retrieval.steps.rerank     ranking + local evidence -> ranking
    retrieval evaluate ...         retrieval.steps.evaluate   ranking x dataset -> metrics JSON
    retrieval run EXPERIMENT       retrieval.steps.run        an experiment file -> results/

A step reads and writes files only (HDF5 feature files, ``.npz`` indexes, JSON rankings), so the same
chain runs from the shell, from Python, or inside an experiment protocol (:mod:`retrieval.steps.chain`,
kind ``retrieval``). Modules are imported only when their command runs.
"""
