"""Beyond one machine's memory: the ranking stage built and searched from stores larger than RAM.

* :mod:`retrieval.scale.sources`: the small interface every builder reads (``dim``, ``n``,
  ``iter_chunks() -> (ids, vectors)``), adapters for HDF5 global feature files and lists of shards,
  and seeded synthetic shards for benchmarks and tests;
* :mod:`retrieval.scale.ivf_build`: faiss IVF-Flat / IVF-PQ trained on a sample and filled chunk by
  chunk (optionally one index file per shard, searched together with a merged top-k), streamed
  exact search and exact re-ranking of an approximate shortlist;
* :mod:`retrieval.scale.ondisk`: the per-shard indexes merged into one whose inverted lists stay on disk;
* :mod:`retrieval.scale.manifest`: the sharded-index folder's ``manifest.json``;
* :mod:`retrieval.scale.measure`: peak memory of a job run in a child process.
"""
